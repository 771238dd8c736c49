"""Everything auditq keeps in Redis, one module for each thing it holds.

- `enqueue` + `enqueue.lua`: the enqueue every producer runs (a script, or a function library)
- `jobs`: how events become arq jobs and back, and the API's provenance tags
- `keys`: the key names (arq's, and those auditq keeps beside them)
- `dead_letter`: the tasks that could not be stored
- `live`: the live stream's entries (which rows each write stored)
- `revocations`: revoked tokens announced to every API replica
- `producer_acl`: the producer's Redis user, which may only enqueue
"""
