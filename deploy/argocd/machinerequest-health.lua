-- Argo CD health check for hostforge.io/MachineRequest.
-- Healthy when Ready is True for the current generation; Degraded with the
-- Degraded (or Ready) condition's reason and message when the operator cannot
-- make progress; Progressing while the request fills, terminates, is deleted
-- or has not been observed at its current generation yet.
local hs = {}

local function find(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return ""
  end
  if c.message ~= nil and c.message ~= "" then
    return (c.reason or "") .. ": " .. c.message
  end
  return c.reason or ""
end

local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the request"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
if status.phase == "Deleting" then
  hs.status = "Progressing"
  hs.message = "Deleting: terminating its machines"
  return hs
end

local ready = find(status.conditions, "Ready")
local degraded = find(status.conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if status.phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
local progressing = find(status.conditions, "Progressing")
hs.status = "Progressing"
if progressing ~= nil and progressing.status == "True" then
  hs.message = describe(progressing)
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Phase " .. tostring(status.phase or "unknown")
end
return hs
