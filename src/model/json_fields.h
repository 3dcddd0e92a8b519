// Typed fields of a JSON config object (config.json, params.json): every error names the
// file and the field, and numbers are range-checked instead of wrapping.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>

#include "model/model_config.h"

namespace cpuchat {

class JsonFields {
 public:
  // `prefix` names a nested object in messages ("rope_scaling.").
  JsonFields(const nlohmann::json& obj, std::string file, std::string prefix = "")
      : obj_(obj), file_(std::move(file)), prefix_(std::move(prefix)) {}

  // A JSON null counts as absent (HF writes "rope_scaling": null).
  bool has(const char* key) const { return obj_.is_object() && obj_.contains(key) && !obj_[key].is_null(); }

  double number(const char* key, std::optional<double> fallback = std::nullopt) const {
    if (!has(key)) return missing(key, fallback);
    const nlohmann::json& v = obj_[key];
    if (!v.is_number()) wrong_type(key, "a number");
    return v.get<double>();
  }
  int integer(const char* key, std::optional<int> fallback = std::nullopt) const {
    if (!has(key)) return missing(key, fallback);
    const nlohmann::json& v = obj_[key];
    if (!v.is_number()) wrong_type(key, "an integer");
    if (v.is_number_unsigned() && v.get<uint64_t>() > 2147483647u) return config_int(double(v.get<uint64_t>()), file_, name(key).c_str());
    return config_int(v.get<double>(), file_, name(key).c_str());
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!obj_[key].is_boolean()) wrong_type(key, "true or false");
    return obj_[key].get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!obj_[key].is_string()) wrong_type(key, "a string");
    return obj_[key].get<std::string>();
  }

 private:
  std::string name(const char* key) const { return prefix_ + key; }
  template <typename T>
  T missing(const char* key, std::optional<T> fallback) const {
    if (fallback) return *fallback;
    throw std::runtime_error(file_ + ": missing \"" + name(key) + "\"");
  }
  [[noreturn]] void wrong_type(const char* key, const char* expected) const {
    throw std::runtime_error(file_ + ": \"" + name(key) + "\" must be " + expected + " (got " +
                             obj_[key].type_name() + ")");
  }
  const nlohmann::json& obj_;
  std::string file_, prefix_;
};

}  // namespace cpuchat
