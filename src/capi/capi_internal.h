// What the two halves of the C API (engine, hybrid) share: turning the
// library's Result errors into a status and the calling thread's message.
// The C API's declarations are in include/foreshore.h.
#pragma once

#include <string>

#include "common/result.h"
#include "foreshore.h"

namespace foreshore::capi {

// Keeps `message` as the calling thread's last error and returns `status`.
foreshore_status fail(foreshore_status status, std::string message);
// The status an Error maps to, its message kept as the last error.
foreshore_status fail(const Error& error);
// Clears the calling thread's last error; returns FORESHORE_OK.
foreshore_status succeed();
// A copy of `text` the caller releases with foreshore_string_free.
char* copy_string(const std::string& text);

}  // namespace foreshore::capi
