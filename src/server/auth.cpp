#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cctype>

namespace cpuchat::server {

std::optional<std::string> bearer_token(const std::string& authorization) {
  const size_t space = authorization.find(' ');
  if (space == std::string::npos) return std::nullopt;
  std::string scheme = authorization.substr(0, space);
  for (char& ch : scheme) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (scheme != "bearer") return std::nullopt;
  const size_t begin = authorization.find_first_not_of(' ', space);
  if (begin == std::string::npos) return std::nullopt;
  return authorization.substr(begin, authorization.find_last_not_of(' ') + 1 - begin);
}

bool same_secret(const std::string& given, const std::string& key) {
  unsigned char a[EVP_MAX_MD_SIZE], b[EVP_MAX_MD_SIZE];
  unsigned int a_len = 0, b_len = 0;
  if (!EVP_Digest(given.data(), given.size(), a, &a_len, EVP_sha256(), nullptr) ||
      !EVP_Digest(key.data(), key.size(), b, &b_len, EVP_sha256(), nullptr) || a_len != b_len)
    return false;
  return CRYPTO_memcmp(a, b, a_len) == 0;
}

}  // namespace cpuchat::server
