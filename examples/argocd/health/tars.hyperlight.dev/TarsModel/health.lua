-- Argo CD health of a TarsModel, read from the conditions the operator writes (Kubernetes API
-- conventions: Ready, Progressing and Degraded, each with observedGeneration).
-- Written for gopher-lua (Lua 5.1), the interpreter Argo CD embeds.
local hs = {}

local function find(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to place the model"
  return hs
end

-- Conditions computed for an older spec say nothing about the current one.
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to observe generation %d", generation)
  return hs
end

local degraded = find(status.conditions, "Degraded")
local ready = find(status.conditions, "Ready")
local progressing = find(status.conditions, "Progressing")

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = says(degraded, "Degraded")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = string.format("%d/%d replicas ready", status.readyReplicas or 0, status.replicas or 0)
  return hs
end

-- Scaled to zero for lack of traffic is the intended state, not a fault: the next request
-- brings a replica back.
if ready ~= nil and ready.status == "False" and ready.reason == "ScaledToZero" then
  hs.status = "Healthy"
  hs.message = says(ready, "Scaled to zero")
  return hs
end

if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = says(progressing, "Placing replicas")
  return hs
end

-- Not ready and no longer making progress: it will not get better by waiting.
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = says(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = says(ready, "Waiting for replicas to become ready")
return hs
