// SHA-256 as lowercase hex: the audit trail's prompt hashes, virtual keys'
// stored digests, and the names under which client keys and sessions are
// counted in the shared state (never the key or session id itself).
#pragma once

#include <openssl/evp.h>

#include <string>
#include <string_view>

namespace foreshore {

// Empty only if OpenSSL cannot allocate (EVP_Digest's one failure).
inline std::string sha256_hex(std::string_view text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr) != 1) {
    return {};
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(length * 2, '0');
  for (unsigned int i = 0; i < length; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xF];
  }
  return out;
}

}  // namespace foreshore
