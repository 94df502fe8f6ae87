-- Included (--@include include/audit.lua) by every script that appends to an audit stream.
-- audit(stream, maxlen, now, action, client, server, tokenId, fp, requestId, ip, detail)
-- maxlen 0: no cap (the security stream, trimmed by retention only); otherwise approximately
-- capped (the serves and refusals streams).
local function audit(stream, maxlen, now, action, client, server, tokenId, fp, requestId, ip, detail)
  if tonumber(maxlen) > 0 then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
      'time', now, 'action', action, 'client', client, 'server', server, 'tokenId', tokenId,
      'fingerprint', fp, 'requestId', requestId, 'ip', ip, 'detail', detail)
  end
  return redis.call('XADD', stream, '*',
    'time', now, 'action', action, 'client', client, 'server', server, 'tokenId', tokenId,
    'fingerprint', fp, 'requestId', requestId, 'ip', ip, 'detail', detail)
end
