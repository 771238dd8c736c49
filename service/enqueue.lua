-- auditq: enqueue audit events as one arq job, atomically.
--   EVAL <script> 1 <queue name> <event JSON> [<task id>]
-- <event JSON> is one event object or a JSON array of them. It is stored as the job's
-- single argument, as a string, exactly as given: the worker validates it, and anything
-- invalid becomes a failed task with its reason rather than disappearing here.
-- Returns the task id. Enqueueing the same task id twice stores it once.
local queue = KEYS[1]
local payload = ARGV[1]
local task_id = ARGV[2]
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
return task_id
