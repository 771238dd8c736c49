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
-- Only a batch up to this size may join the open job: proving it well-formed costs Valkey a
-- decode (a few µs an event), which pays where a job of its own would cost more than its
-- events (a job's fixed cost in the worker and PostgreSQL is that of hundreds of events: at
-- 32 KiB, 64 awaited captures' batches of ~40 KB were jobs of their own and the write side
-- stored a third of what it stored merged); a larger batch is a job of its own.
local MERGE_BATCH_MAX_BYTES = 262144

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

-- Write the job (or join the open job): the path of a caller allowed to write jobs.
local function write_job(queue, payload, task_id, finalized, via, tag, at_ms, mergeable)
  local flagged = finalized and (task_id == nil or task_id == '') and (via == nil or via == '')
  local merge = mergeable and flagged and #payload <= MERGE_BATCH_MAX_BYTES and well_formed(payload)
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
  local now_ms = at_ms
  if now_ms == nil then
    local now = redis.call('TIME')
    now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  end
  if task_id == nil or task_id == '' then
    local seq = redis.call('INCR', 'auditq:task-seq')
    task_id = string.format('%d-%d', now_ms, seq)
  end
  local job_key = 'arq:job:' .. task_id
  if redis.call('EXISTS', job_key, 'arq:result:' .. task_id) > 0 then
    -- Nothing to write: this write lets a WAIT that follows cover what came before it.
    redis.call('SET', 'auditq:wait-fence', task_id)
    return task_id
  end
  -- arq's job layout (t: try, f: function, a: args, k: kwargs, et: enqueued ms), in JSON; the
  -- arguments come last, so that a merge appends a segment at the end.
  -- A flagged batch too big to merge (or from the inbox) is a job of its own that keeps the
  -- flag: the worker still reads it the one-statement way, checking every event against the
  -- wire format (the flag vouches for nothing), and a bad one spoils no other producer's.
  local kwargs = flagged and '{"finalized":true}' or '{}'
  if via and via ~= '' then
    kwargs = '{"finalized":' .. (finalized and 'true' or 'false') ..
      ',"via":' .. cjson.encode(via) .. ',"tag":' .. cjson.encode(tag or '') .. '}'
  end
  local job = '{"t":null,"f":"store_events","k":' .. kwargs .. ',"et":' ..
    string.format('%d', now_ms) .. ',"a":[' .. cjson.encode(payload) .. ']}'
  if #job > MAX_JOB_BYTES and at_ms == nil then  -- escaping made it longer: refused
    -- (From the inbox, at_ms is given: the job is written, and a worker sets it aside.)
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

-- The producer user (docs/producers.md) may run this function and append to its queue's
-- inbox, nothing else: it can neither read nor write a job. Its batch waits in the inbox,
-- a line of JSON (the task's id and flags) and then the payload, until a worker moves it
-- into a job of its own (auditq_drain), exactly as if it had been written here.
local INBOX_PREFIX = 'auditq:inbox:'

local function to_inbox(queue, payload, task_id, finalized, via, tag)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local given = task_id ~= nil and task_id ~= ''
  if not given then
    -- No counter a producer could read: time and chance, and the drain makes a clash unique.
    task_id = string.format('%d-%05d%05d', now_ms, math.random(0, 99999), math.random(0, 99999))
  end
  local header = cjson.encode({id = task_id, given = given, finalized = finalized,
    via = via or '', tag = tag or '', ms = now_ms})
  redis.call('RPUSH', INBOX_PREFIX .. queue, header .. '\n' .. payload)
  return task_id
end

local function enqueue(KEYS, ARGV)
  local queue = KEYS[1]
  local payload = ARGV[1]
  if queue == nil or payload == nil then
    return redis.error_reply(
      'ERR auditq_enqueue: give 1 key (the queue name), then the event JSON as an argument')
  end
  if #payload > MAX_JOB_BYTES then
    return redis.error_reply(string.format(
      'ERR auditq_enqueue: the payload is %d bytes, over AUDITQ_MAX_JOB_BYTES (%d)',
      #payload, MAX_JOB_BYTES))
  end
  local finalized = ARGV[3] == 'finalized'
  if redis.acl_check_cmd and not redis.acl_check_cmd('SET', 'arq:job:' .. queue, '') then
    return to_inbox(queue, payload, ARGV[2], finalized, ARGV[4], ARGV[5])
  end
  return write_job(queue, payload, ARGV[2], finalized, ARGV[4], ARGV[5], nil, true)
end

-- FCALL auditq_drain 1 <queue name> <count>: what a worker runs to move up to <count> batches
-- from the inbox into jobs. An entry not written by auditq_enqueue (appended by hand) is a
-- task of its own, read by the worker like any foreign producer's.
local function drain(KEYS, ARGV)
  local queue = KEYS[1]
  local entries = redis.call('LPOP', INBOX_PREFIX .. queue, tonumber(ARGV[1]) or 100)
  if not entries then
    return 0
  end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _, entry in ipairs(entries) do
    local cut = string.find(entry, '\n', 1, true)
    local ok, header = false, nil
    if cut then
      ok, header = pcall(cjson.decode, string.sub(entry, 1, cut - 1))
    end
    if ok and type(header) == 'table' and type(header.id) == 'string' and header.id ~= ''
        and type(header.ms) == 'number' then
      local id = header.id
      if header.given ~= true and redis.call('EXISTS', 'arq:job:' .. id, 'arq:result:' .. id) > 0
      then
        id = ''  -- a made-up id that clashed: a fresh one
      end
      local via = type(header.via) == 'string' and header.via or ''
      local tag = type(header.tag) == 'string' and header.tag or ''
      local at_ms = math.floor(header.ms)
      if not (at_ms >= 0 and at_ms <= now_ms) then
        at_ms = now_ms
      end
      write_job(queue, string.sub(entry, cut + 1), id, header.finalized == true, via, tag,
        at_ms, false)
    else
      write_job(queue, entry, '', false, '', '', now_ms, false)
    end
  end
  return #entries
end

if redis.register_function then  -- loaded as the function library (FUNCTION LOAD)
  redis.register_function('auditq_enqueue', enqueue)
  redis.register_function('auditq_drain', drain)
else  -- run as a script (EVAL)
  return enqueue(KEYS, ARGV)
end
