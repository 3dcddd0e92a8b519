// The API key check: the Authorization header's bearer token, compared in constant time.
#pragma once
#include <optional>
#include <string>

namespace cpuchat::server {

// The token of "Bearer <token>": the scheme in any case (RFC 7235), spaces around the token
// ignored. nullopt for a missing header or another scheme.
std::optional<std::string> bearer_token(const std::string& authorization);

// Compares SHA-256 digests of both in constant time, so the response time reveals neither how
// much of the key matched nor its length.
bool same_secret(const std::string& given, const std::string& key);

}  // namespace cpuchat::server
