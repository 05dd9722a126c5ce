#include "cli/commands.h"

#include <iostream>

namespace sy::cli {

int fail(const Error& e) {
  std::cerr << "error: " << e.message << "\n";
  return e.kind == ErrorKind::kInvalidArgument || e.kind == ErrorKind::kNotFound ? 2 : 1;
}

}  // namespace sy::cli
