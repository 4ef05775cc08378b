-- Argo CD health of an RvfMicroVm (rvf.ruvector.io/v1alpha1).
--
--   Healthy      Ready=True
--   Degraded     phase Failed, or Stalled=True (a cause the user must fix: no KVM node,
--                missing PVC, bad RVF, Pod Security rejection, refused hostPath ...)
--   Suspended    phase Stopped (runStrategy Halted or Once, or a clean guest poweroff)
--   Progressing  anything else: no status yet, a spec change not yet observed, or
--                Pending / Extracting / Booting / Stopping
--
-- Installed through argocd-cm as resource.customizations.health.rvf.ruvector.io_RvfMicroVm
-- (see argocd-cm-patch.yaml beside this file). Argo CD's Lua is 5.1 (gopher-lua).

local hs = { status = "Progressing", message = "Waiting for the operator to report status" }

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil then
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
local reconciling = condition(status, "Reconciling")
-- A failed VM under Always or RerunOnFailure waits out a backoff and runs again; the
-- operator says so with Reconciling=True, as kstatus (and so Flux) reads it.
if status.phase == "Failed" and reconciling ~= nil and reconciling.status == "True"
    and not (stalled ~= nil and stalled.status == "True") then
  hs.message = "Failed, rerun pending: " .. (status.message or describe(reconciling, "waiting to rerun"))
  return hs
end
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.message or describe(stalled, describe(condition(status, "Ready"), "The VM failed"))
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "The operator cannot make progress")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "The guest answers on its API port")
  return hs
end

if status.phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = status.message or describe(ready, "The VM is stopped")
  return hs
end

local phase = status.phase or "Pending"
hs.message = phase .. ": " .. describe(ready, describe(condition(status, "Reconciling"), "starting"))
return hs
