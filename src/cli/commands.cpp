#include "cli/commands.h"

#include <iostream>

namespace foreshore::cli {

int fail(const Error& e) {
  std::cerr << "error: " << e.message << "\n";
  return e.kind == ErrorKind::kInvalidArgument || e.kind == ErrorKind::kNotFound ? 2 : 1;
}

}  // namespace foreshore::cli
