-- auditq: enqueue audit events as one arq job, atomically.
--   FCALL auditq_enqueue 1 <queue name> <event JSON> [<task id>]
-- with the function library `auditq` (this file behind a `#!lua name=auditq` line), which
-- `auditq migrate` and every worker load; where a Redis has no functions (before Redis 7),
-- this same file runs as a script with the same arguments:
--   EVAL <script> 1 <queue name> <event JSON> [<task id>]
-- <event JSON> is one event object or a JSON array of them. It is stored as the job's
-- single argument, as a string, exactly as given: the worker validates it, and anything
-- invalid becomes a failed task with its reason rather than disappearing here.
-- Returns the task id. Enqueueing the same task id twice stores it once.
--   FCALL auditq_enqueue 1 <queue name> <event JSON array> '' finalized
-- is what auditq's Python client sends: arrays of events it completed (id, ts, category,
-- presentation) and redacted. Such a batch joins the queue's open job (made the same way)
-- while no worker has started it and the job stays under MERGE_MAX_BYTES, so a worker takes
-- many producers' small batches as one job -- but only a batch proven well-formed here (a
-- non-empty JSON array of objects, each with a string "action"), and as a segment of its own
-- (one more argument of the job), so the worker still reads, checks and if need be sets
-- aside each batch alone: no batch can spoil another. The flag is a hint, never trusted: the
-- worker checks every event of every job against the wire format. A job that has started (or
-- ever ran) is never appended to; a worker reads a job only after it marked it in progress,
-- and this runs atomically, so no appended batch can be missed.
--   FCALL auditq_enqueue 1 <queue name> <event JSON> <task id> finalized <via> <tag>
-- is what auditq's API sends for HTTP ingest and its own events: a provenance claim (`via`,
-- e.g. http:<token name>) and its HMAC tag, which the worker checks with a key only the API
-- and the worker hold; a claim it cannot check is stored as redis:<queue>, like any other.
-- A payload over MAX_JOB_BYTES (AUDITQ_MAX_JOB_BYTES: auditq loads this with its setting) is
-- refused with an error reply: no worker would read it.
local MAX_JOB_BYTES = 8388608
local MERGE_MAX_BYTES = 1048576

-- Whether a batch may join the open job: a non-empty JSON array of objects with an action.
local function well_formed(payload)
  if string.sub(payload, 1, 1) ~= '[' then
    return false
  end
  local ok, events = pcall(cjson.decode, payload)
  if not ok or type(events) ~= 'table' or #events == 0 then
    return false
  end
  for i = 1, #events do
    local event = events[i]
    if type(event) ~= 'table' or type(rawget(event, 'action')) ~= 'string' then
      return false
    end
  end
  return true
end

local function enqueue(KEYS, ARGV)
  local queue = KEYS[1]
  local payload = ARGV[1]
  local task_id = ARGV[2]
  local via = ARGV[4]
  local tag = ARGV[5]
  if payload == nil then
    return redis.error_reply('ERR auditq_enqueue: no payload given (queue name, then the event JSON)')
  end
  if #payload > MAX_JOB_BYTES then
    return redis.error_reply(string.format(
      'ERR auditq_enqueue: the payload is %d bytes, over AUDITQ_MAX_JOB_BYTES (%d)',
      #payload, MAX_JOB_BYTES))
  end
  local merge = ARGV[3] == 'finalized' and (task_id == nil or task_id == '')
    and (via == nil or via == '') and well_formed(payload)
  local open_key = 'auditq:open-job:' .. queue
  if merge then
    local open = redis.call('GET', open_key)
    if open and redis.call('EXISTS', 'arq:in-progress:' .. open, 'arq:retry:' .. open,
        'arq:result:' .. open) == 0 and redis.call('ZSCORE', queue, open) then
      local open_job = 'arq:job:' .. open
      local size = redis.call('STRLEN', open_job)
      -- The job ends with its last segment's closing quote and then ']}' (see the layout
      -- below): write the batch as one more argument (a JSON string) over those two bytes, in
      -- place, so an append costs what it adds, not what the job already holds.
      local encoded = cjson.encode(payload)
      if size > 3 and size + #encoded + 1 <= math.min(MERGE_MAX_BYTES, MAX_JOB_BYTES)
          and redis.call('GETRANGE', open_job, size - 3, size - 1) == '"]}' then
        redis.call('SETRANGE', open_job, size - 2, ',' .. encoded .. ']}')
        return open
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
  -- arq's job layout (t: try, f: function, a: args, k: kwargs, et: enqueued ms), in JSON; the
  -- arguments come last, so that a merge appends a segment at the end.
  local kwargs = merge and '{"finalized":true}' or '{}'
  if via and via ~= '' then
    kwargs = '{"finalized":' .. (ARGV[3] == 'finalized' and 'true' or 'false') ..
      ',"via":' .. cjson.encode(via) .. ',"tag":' .. cjson.encode(tag or '') .. '}'
  end
  local job = '{"t":null,"f":"store_events","k":' .. kwargs .. ',"et":' ..
    string.format('%d', now_ms) .. ',"a":[' .. cjson.encode(payload) .. ']}'
  if #job > MAX_JOB_BYTES then  -- escaping made it longer: a worker would not read it
    return redis.error_reply(string.format(
      'ERR auditq_enqueue: the task is %d bytes once encoded, over AUDITQ_MAX_JOB_BYTES (%d)',
      #job, MAX_JOB_BYTES))
  end
  -- No expiry: a queued job waits for a worker however long that takes.
  redis.call('SET', job_key, job)
  redis.call('ZADD', queue, now_ms, task_id)
  if merge then
    redis.call('SET', open_key, task_id, 'PX', 60000)
  end
  return task_id
end

if redis.register_function then  -- loaded as the function library (FUNCTION LOAD)
  redis.register_function('auditq_enqueue', enqueue)
else  -- run as a script (EVAL)
  return enqueue(KEYS, ARGV)
end
