// Observability of the hybrid: the audit store and its report, the memory
// pressure monitor and the model version registry. Each
// part runs its own background thread where it needs one, and none of them
// blocks the request path on I/O or on another tier.
#pragma once

#include "observe/audit_store.h"
#include "observe/memory_pressure.h"
#include "observe/report.h"
#include "observe/version_registry.h"
