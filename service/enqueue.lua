-- auditq: enqueue audit events as one arq job, atomically.
--   EVAL <script> 1 <queue name> <event JSON> [<task id>]
-- <event JSON> is one event object or a JSON array of them. It is stored as the job's
-- single argument, as a string, exactly as given: the worker validates it, and anything
-- invalid becomes a failed task with its reason rather than disappearing here.
-- Returns the task id. Enqueueing the same task id twice stores it once.
--   EVAL <script> 1 <queue name> <event JSON array> '' merge
-- (what the Python client sends: arrays of events it validated) appends the events to the
-- queue's open job instead, while no worker has started that job and it stays under
-- MERGE_MAX_BYTES; a worker then takes many producers' small batches as one job. A job that
-- has started (or ever ran) is never appended to; a worker reads a job only after it marked
-- it in progress, and this script runs atomically, so no appended event can be missed.
local queue = KEYS[1]
local payload = ARGV[1]
local task_id = ARGV[2]
local merge = ARGV[3] == 'merge' and (task_id == nil or task_id == '')
  and #payload > 2 and string.sub(payload, 1, 1) == '[' and string.sub(payload, -1) == ']'
local MERGE_MAX_BYTES = 1048576
local open_key = 'auditq:open-job:' .. queue
if merge then
  local open = redis.call('GET', open_key)
  if open and redis.call('EXISTS', 'arq:in-progress:' .. open, 'arq:retry:' .. open,
      'arq:result:' .. open) == 0 and redis.call('ZSCORE', queue, open) then
    local job = redis.call('GET', 'arq:job:' .. open)
    if job and #job + #payload <= MERGE_MAX_BYTES then
      -- The job ends with the array's "]", then '"],"k":{},"et":<ms>}': splice the new events
      -- (JSON-string-escaped, without their "[") in before that "]".
      local head, tail = string.match(job, '^(.*)%](%"%],%"k%":{},%"et%":%d+})$')
      if head then
        local encoded = cjson.encode(payload)
        redis.call('SET', 'arq:job:' .. open, head .. ',' .. string.sub(encoded, 3, -2) .. tail)
        return open
      end
    end
  end
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if task_id == nil or task_id == '' then
  local seq = redis.call('INCR', 'auditq:task-seq')
  task_id = string.format('%d-%d', now_ms, seq)
end
local job_key = 'arq:job:' .. task_id
if redis.call('EXISTS', job_key, 'arq:result:' .. task_id) > 0 then
  return task_id
end
-- arq's job layout (t: try, f: function, a: args, k: kwargs, et: enqueued ms), in JSON.
local job = '{"t":null,"f":"store_events","a":[' .. cjson.encode(payload or '') ..
  '],"k":{},"et":' .. string.format('%d', now_ms) .. '}'
-- No expiry: a queued job waits for a worker however long that takes.
redis.call('SET', job_key, job)
redis.call('ZADD', queue, now_ms, task_id)
if merge then
  redis.call('SET', open_key, task_id, 'PX', 60000)
end
return task_id
