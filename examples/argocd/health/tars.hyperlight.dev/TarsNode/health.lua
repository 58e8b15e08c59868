-- Argo CD health of a TarsNode, read from the conditions the operator writes (Kubernetes API
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
  hs.message = "Waiting for the operator to report status"
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
  local agents = string.format("%d/%d agents ready", status.readyAgents or 0, status.desiredAgents or 0)
  if status.backend ~= nil and status.backend ~= "" then
    agents = agents .. " (" .. status.backend .. ")"
  end
  hs.message = agents
  return hs
end

if progressing ~= nil and progressing.status == "True" then
  hs.status = "Progressing"
  hs.message = says(progressing, "Rolling out agents")
  return hs
end

-- Not ready and no longer making progress: it will not get better by waiting.
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = says(ready, "Not ready")
  return hs
end

hs.status = "Progressing"
hs.message = says(ready, "Waiting for agents to become ready")
return hs
