// The one error shape of the HTTP API (docs/API.md "Errors"): every failure, from
// malformed JSON to a full queue, becomes an ApiError and is rendered the same way.
#pragma once
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace cpuchat::server {

struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string code = {}, std::string param = {},
           std::string type = {})
      : std::runtime_error(message), status(status), code(std::move(code)),
        param(std::move(param)), type(type.empty() ? default_type(status) : std::move(type)) {}

  int status;
  std::string code;   // machine-readable, e.g. "invalid_type"; "" renders as null
  std::string param;  // the offending request field; "" renders as null
  std::string type;   // "invalid_request_error", "authentication_error", ...

  nlohmann::json to_json() const {
    auto null_if_empty = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
    return {{"error", {{"message", what()}, {"type", type}, {"param", null_if_empty(param)},
                       {"code", null_if_empty(code)}}}};
  }

  static std::string default_type(int status) {
    switch (status) {
      case 401: return "authentication_error";
      case 403: return "permission_error";
      case 404: return "not_found_error";
      case 429: return "rate_limit_error";
      case 503: return "service_unavailable_error";
      default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
  }
};

// JSON text for the wire. Invalid UTF-8 (e.g. a lone token byte in logprobs) is replaced
// with U+FFFD instead of throwing mid-response.
inline std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace cpuchat::server
