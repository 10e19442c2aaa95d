"""The Lua scripts that change the shared state, each one atomic step on the server.

Keys (all under one prefix, ``ll:`` unless a test picks another):

- ``q``: sorted set of queued socket ids, scored by arrival (``seq``), FCFS order;
- ``seq``: arrival counter; ``stats``: hash ``total`` (rooms made) and ``active``;
- ``p:<sid>``: hash, one person queued or in a room: ``state`` (``q`` or ``r``),
  ``node``, ``ticket``, ``name``, ``image``, and ``room`` when in one; ``pid`` (their
  connection state recovery id, when they have one); ``away`` while a queued person's
  connection is lost and may recover (``1``: kept in place, never paired), or ``lost``
  while their node is lost and they may recover on another (queued or placed; their
  partner is not told). Idle people have no record;
- ``gone``: sorted set of the people of lost nodes, scored by when (Redis's clock, ms)
  their recovery window ends; HEARTBEAT ends them then unless they came back;
- ``o:<pid>``: the node a moved connection state recovery record lives on (a day);
- ``r:<room>``: hash ``a``, ``an``, ``b``, ``bn``: the members and their nodes;
- ``n:<node>``: set of the socket ids that node has queued or placed;
- ``c:<sid>|<sid>`` (the two sorted): a cooldown after "Next", expiring by itself;
- ``nodes``: set of registered node ids; ``alive:<node>``: expires unless refreshed;
- ``wake``: earliest time (Redis's clock, ms) when a cooldown between two queued
  people ends, so that a sweep can pair them.

Every script that ends a room returns *notices*, flat arrays that the calling node
delivers to each person's node: ``{"E", sid, node, room}`` (your room ended) and
``{"M", sid, node, ticket, room, partner, partner_node, partner_name, partner_image,
initiator}`` (you are matched); HEARTBEAT also ``{"L", partner, partner_node, room, sid}``
(your partner's node is lost: hold relays for them) and MOVE ``{"V", partner,
partner_node, room, sid, node}`` (your partner moved to ``node``). The scripts touch
keys they compute (a person's record from a queued id), so they need a standalone
server (or a primary with replicas), not Redis Cluster: docs/cluster.md says why that is
enough.
"""

from __future__ import annotations

_COMMON = r"""
local P = KEYS[1]
local function pkey(sid) return P .. 'p:' .. sid end
local function ckey(a, b)
  if a < b then return P .. 'c:' .. a .. '|' .. b end
  return P .. 'c:' .. b .. '|' .. a
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(sid, node)
  redis.call('DEL', pkey(sid))
  redis.call('SREM', P .. 'n:' .. node, sid)
  redis.call('ZREM', P .. 'gone', sid)
end
-- Where ``sid`` sits in ``room``: the room's field naming its node (``an`` or ``bn``),
-- that node, its partner and the partner's node. Nothing when ``sid`` is not a member
-- (or the room is gone).
local function seat(room, sid)
  local m = redis.call('HMGET', P .. 'r:' .. room, 'a', 'an', 'b', 'bn')
  if m[1] == sid then return 'an', m[2], m[3], m[4] end
  if m[3] == sid then return 'bn', m[4], m[1], m[2] end
end
-- End ``room`` because ``leaver`` left it; both records leave it. Appends the
-- partner's notice to ``out``. Returns false when ``leaver`` is not in that room.
local function end_room(room, leaver, out)
  local mine, me, partner, pnode = seat(room, leaver)
  if not mine then return false end
  redis.call('DEL', P .. 'r:' .. room)
  redis.call('HINCRBY', P .. 'stats', 'active', -1)
  for _, who in ipairs({{leaver, me}, {partner, pnode}}) do
    if redis.call('HGET', pkey(who[1]), 'room') == room then forget(who[1], who[2]) end
  end
  table.insert(out, {'E', partner, pnode, room})
  return true
end
-- ``sid`` (its record's ``state`` and ``room``, on ``node``) is gone: out of the queue,
-- or its room ends (the partner's notice to ``out``).
local function withdraw(sid, state, room, node, out)
  if state == 'q' then
    redis.call('ZREM', P .. 'q', sid)
    forget(sid, node)
  elseif state == 'r' then
    end_room(room, sid, out)
  end
end
-- ``sid``, on node ``old`` and in ``room`` (false when queued), now lives on ``node``:
-- its record, the node sets and its seat in the room say so. When seated there, returns
-- the seat's field, the partner and the partner's node (see ``seat``).
local function move_to(sid, old, room, node)
  if old ~= node then
    redis.call('SREM', P .. 'n:' .. old, sid)
    redis.call('SADD', P .. 'n:' .. node, sid)
    redis.call('HSET', pkey(sid), 'node', node)
  end
  if not room then return end
  local mine, _, partner, pnode = seat(room, sid)
  if mine then redis.call('HSET', P .. 'r:' .. room, mine, node) end
  return mine, partner, pnode
end
-- Place ``first`` (waited longer) and ``second`` in ``room``; both notices to ``out``.
local function place(room, first, f, second, s, out)
  redis.call('HSET', P .. 'r:' .. room, 'a', first, 'an', f.node, 'b', second, 'bn', s.node)
  redis.call('HINCRBY', P .. 'stats', 'total', 1)
  redis.call('HINCRBY', P .. 'stats', 'active', 1)
  redis.call('ZREM', P .. 'q', first, second)
  for _, who in ipairs({first, second}) do
    redis.call('HSET', pkey(who), 'state', 'r', 'room', room)
    -- Name and image served their purpose (the notices carry them): memory back.
    redis.call('HDEL', pkey(who), 'name', 'image')
  end
  table.insert(out, {'M', first, f.node, f.ticket, room, second, s.node, s.name, s.image, 1})
  table.insert(out, {'M', second, s.node, s.ticket, room, first, f.node, f.name, f.image, 0})
end
local function away(sid) return redis.call('HEXISTS', pkey(sid), 'away') == 1 end
local function record(sid)
  local r = redis.call('HMGET', pkey(sid), 'node', 'ticket', 'name', 'image')
  return {node = r[1], ticket = r[2], name = r[3], image = r[4]}
end
-- May ``a`` and ``b`` be paired now? Not while a cooldown is between them: then
-- remember when it ends, so that a later sweep pairs them.
local function may_pair(a, b)
  if redis.call('EXISTS', ckey(a, b)) == 0 then return true end
  local left = redis.call('PTTL', ckey(a, b))
  if left > 0 then
    local at = now_ms() + left
    local wake = tonumber(redis.call('GET', P .. 'wake') or '0')
    if wake == 0 or at < wake then redis.call('SET', P .. 'wake', at) end
  end
  return false
end
-- The longest-waiting present queued person among the first ``limit`` whom ``sid`` may
-- be paired with; nothing when none.
local function partner_for(sid, limit)
  for _, other in ipairs(redis.call('ZRANGE', P .. 'q', 0, limit - 1)) do
    if other ~= sid and not away(other) and may_pair(sid, other) then return other end
  end
end
"""

ENQUEUE = _COMMON + r"""
-- ARGV: sid, node, name, image, ticket, max_queue, new room id, scan limit, pid ('' for
-- none). Returns {outcome, notices}; outcome 'queued', 'already', 'paired' or 'full'.
local sid, node = ARGV[1], ARGV[2]
local out = {}
local state = redis.call('HGET', pkey(sid), 'state')
if state == 'q' then
  redis.call('HSET', pkey(sid), 'ticket', ARGV[5], 'name', ARGV[3], 'image', ARGV[4])
  return {'already', {}}
end
if state == 'r' then  -- queuing again means leaving the room (Next)
  end_room(redis.call('HGET', pkey(sid), 'room'), sid, out)
end
if redis.call('ZCARD', P .. 'q') >= tonumber(ARGV[6]) then
  return {'full', out}
end
local me = {node = node, ticket = ARGV[5], name = ARGV[3], image = ARGV[4]}
redis.call('HSET', pkey(sid), 'state', 'q', 'node', node, 'ticket', ARGV[5],
           'name', ARGV[3], 'image', ARGV[4])
if ARGV[9] and ARGV[9] ~= '' then redis.call('HSET', pkey(sid), 'pid', ARGV[9]) end
redis.call('SADD', P .. 'n:' .. node, sid)
local other = partner_for(sid, tonumber(ARGV[8]))
if other then
  place(ARGV[7], other, record(other), sid, me, out)
  return {'paired', out}
end
redis.call('ZADD', P .. 'q', redis.call('INCR', P .. 'seq'), sid)
return {'queued', out}
"""

LEAVE = _COMMON + r"""
-- ARGV: sid, room ('' for wherever sid is: the queue or a room)
-- A named room is left only if sid is in it (Hangup); returns the notices.
local sid, room = ARGV[1], ARGV[2]
local out = {}
local r = redis.call('HMGET', pkey(sid), 'state', 'room', 'node')
if not r[1] then return out end
if room ~= '' then
  if r[1] == 'r' and r[2] == room then end_room(room, sid, out) end
  return out
end
withdraw(sid, r[1], r[2], r[3], out)
return out
"""

SWEEP = _COMMON + r"""
-- ARGV: scan limit, room ids to use... Pairs queued people whose cooldown has ended,
-- first come first served; does nothing before the time ``wake`` names.
local wake = tonumber(redis.call('GET', P .. 'wake') or '0')
if wake == 0 or wake > now_ms() then return {} end
redis.call('DEL', P .. 'wake')
local out = {}
local order = redis.call('ZRANGE', P .. 'q', 0, tonumber(ARGV[1]) - 1)
local taken = {}
local next_room = 2
for i, first in ipairs(order) do
  if next_room > #ARGV then break end
  if not taken[first] and not away(first) then
    for j = i + 1, #order do
      local second = order[j]
      if not taken[second] and not away(second) and may_pair(first, second) then
        taken[first], taken[second] = true, true
        place(ARGV[next_room], first, record(first), second, record(second), out)
        next_room = next_room + 1
        break
      end
    end
  end
end
return out
"""

HEARTBEAT = _COMMON + r"""
-- ARGV: node, liveness in ms, register ('1' at start and before dropping clients: what
-- this node's id left is cleared first), recovery window in ms ('0' or absent: off).
-- Returns {alive, notices}:
-- alive 0 when this node had been declared lost (it must drop its clients). Any other
-- registered node whose liveness key is gone is declared lost here: its queued people
-- leave the queue and its people's rooms end (their partners get notices); with a
-- recovery window, they are away instead ('lost', kept in place, partners not told but
-- their nodes get {'L', partner, partner_node, room, sid} to keep relays meanwhile)
-- until the window ends, when the same happens unless they recovered on another node.
local node, ttl = ARGV[1], tonumber(ARGV[2])
local window = tonumber(ARGV[4] or '0')
if ARGV[3] ~= '1' and redis.call('SISMEMBER', P .. 'nodes', node) == 0 then
  return {0, {}}
end
local out = {}
-- One of a lost node's people is gone: out of the queue, or their room ends.
local function finish(sid, lost)
  local r = redis.call('HMGET', pkey(sid), 'state', 'room')
  withdraw(sid, r[1], r[2], lost, out)
end
local function reap(lost, hold)
  local members = redis.call('SMEMBERS', P .. 'n:' .. lost)
  if hold then
    local until_ms = now_ms() + window
    for _, sid in ipairs(members) do
      local r = redis.call('HMGET', pkey(sid), 'state', 'room')
      redis.call('HSET', pkey(sid), 'away', 'lost')
      redis.call('ZADD', P .. 'gone', until_ms, sid)
      if r[1] == 'r' then  -- the partner's node keeps their relays meanwhile
        local mine, _, partner, pnode = seat(r[2], sid)
        if mine then table.insert(out, {'L', partner, pnode, r[2], sid}) end
      end
    end
    return
  end
  for _, sid in ipairs(members) do finish(sid, lost) end
  redis.call('DEL', P .. 'n:' .. lost)
end
if ARGV[3] == '1' then reap(node, false) end  -- registering: nothing of an earlier life
-- Lost nodes' people whose window has ended without their coming back.
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'gone', '-inf', now_ms())) do
  redis.call('ZREM', P .. 'gone', sid)
  local r = redis.call('HMGET', pkey(sid), 'away', 'node')
  if r[1] == 'lost' then finish(sid, r[2]) end
end
redis.call('SADD', P .. 'nodes', node)
redis.call('SET', P .. 'alive:' .. node, '1', 'PX', ttl)
for _, other in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if redis.call('EXISTS', P .. 'alive:' .. other) == 0 then
    redis.call('SREM', P .. 'nodes', other)
    reap(other, window > 0)
  end
end
return {1, out}
"""

AWAY = _COMMON + r"""
-- ARGV: sid. A queued person's connection is lost (they may recover): keep their
-- place, pair nobody with them until RETURN. Nothing for anyone else.
if redis.call('HGET', pkey(ARGV[1]), 'state') == 'q' then
  redis.call('HSET', pkey(ARGV[1]), 'away', '1')
end
return {}
"""

RETURN = _COMMON + r"""
-- ARGV: sid, new room id, scan limit. A person back after a lost connection: if queued,
-- pair them with the longest-waiting present person they may be paired with (the one
-- who waited longer is the initiator), else they wait in their place. Returns notices.
local sid = ARGV[1]
local out = {}
local state = redis.call('HGET', pkey(sid), 'state')
if not state then return out end
redis.call('HDEL', pkey(sid), 'away')
if state ~= 'q' then return out end
local mine = tonumber(redis.call('ZSCORE', P .. 'q', sid))
if not mine then return out end
local other = partner_for(sid, tonumber(ARGV[3]))
if other then
  if tonumber(redis.call('ZSCORE', P .. 'q', other)) < mine then
    place(ARGV[2], other, record(other), sid, record(sid), out)
  else
    place(ARGV[2], sid, record(sid), other, record(other), out)
  end
end
return out
"""

MOVE = _COMMON + r"""
-- ARGV: sid, node. ``sid`` (queued or placed) now lives on ``node`` (it recovered there):
-- its record, its node sets and its room name ``node``. Returns the partner's "moved"
-- notice {'V', partner, partner_node, room, sid, node} when in a room.
local sid, node = ARGV[1], ARGV[2]
local r = redis.call('HMGET', pkey(sid), 'state', 'node', 'room')
if not r[1] then return {} end
local seated, partner, pnode = move_to(sid, r[2], r[1] == 'r' and r[3], node)
if seated then return {{'V', partner, pnode, r[3], sid, node}} end
return {}
"""

RECLAIM = _COMMON + r"""
-- ARGV: sid, pid, node. A person of a lost node (away 'lost') is back on ``node`` with
-- their recovery id: theirs again, from here. Returns {} if not (unknown, not away
-- from a lost node, or another pid), else {state, ticket, name, image, room, partner,
-- partner_node} (the last three empty when queued).
local sid, pid, node = ARGV[1], ARGV[2], ARGV[3]
local r = redis.call('HMGET', pkey(sid), 'state', 'node', 'room', 'away', 'pid', 'ticket',
                     'name', 'image')
if not r[1] or r[4] ~= 'lost' or r[5] ~= pid then return {} end
redis.call('HDEL', pkey(sid), 'away')
redis.call('ZREM', P .. 'gone', sid)
local _, partner, pnode = move_to(sid, r[2], r[1] == 'r' and r[3], node)
if r[1] == 'q' then return {'q', r[6], r[7] or '', r[8] or '', '', '', ''} end
return {'r', r[6], r[7] or '', r[8] or '', r[3], partner or '', pnode or ''}
"""

STATUS = r"""
-- ARGV: names at most. Returns {queue size, rooms active, rooms total, names...}.
local P = KEYS[1]
local out = {redis.call('ZCARD', P .. 'q'),
             tonumber(redis.call('HGET', P .. 'stats', 'active') or '0'),
             tonumber(redis.call('HGET', P .. 'stats', 'total') or '0')}
for _, sid in ipairs(redis.call('ZRANGE', P .. 'q', 0, tonumber(ARGV[1]) - 1)) do
  table.insert(out, redis.call('HGET', P .. 'p:' .. sid, 'name') or '')
end
return out
"""

NAMES = ("ENQUEUE", "LEAVE", "SWEEP", "HEARTBEAT", "STATUS", "AWAY", "RETURN", "MOVE",
         "RECLAIM")
"""Every script, by its name here (what a node loads)."""
