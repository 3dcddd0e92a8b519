#include "cli/args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

namespace cpuchat {

Args::Args(int argc, char** argv, std::set<std::string> valued, std::set<std::string> switches) {
  switches.insert("--help");
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string value;
    bool inline_value = false;
    if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      inline_value = true;
    }
    if (switches.count(a)) {
      if (inline_value) throw UsageError(a + " takes no value");
      values_[a] = "1";
    } else if (valued.count(a)) {
      if (!inline_value) {
        if (i + 1 >= argc) throw UsageError(a + " needs a value");
        value = argv[++i];
      }
      values_[a] = value;
    } else {
      throw UsageError("unknown argument '" + a + "'");
    }
  }
}

std::string Args::get(const std::string& flag, const std::string& fallback) const {
  auto it = values_.find(flag);
  return it == values_.end() ? fallback : it->second;
}

std::string Args::require(const std::string& flag) const {
  if (!has(flag)) throw UsageError(flag + " is required");
  return get(flag);
}

long long Args::get_int(const std::string& flag, long long fallback, long long min, long long max) const {
  if (!has(flag)) return fallback;
  const std::string s = get(flag);
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || errno) throw UsageError(flag + " expects an integer, got '" + s + "'");
  if (v < min || v > max)
    throw UsageError(flag + " must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + s);
  return v;
}

double Args::get_double(const std::string& flag, double fallback, double min, double max) const {
  if (!has(flag)) return fallback;
  const std::string s = get(flag);
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end || v != v) throw UsageError(flag + " expects a number, got '" + s + "'");
  if (v < min || v > max)
    throw UsageError(flag + " must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + s);
  return v;
}

std::vector<int> Args::get_ids(const std::string& flag) const {
  std::vector<int> ids;
  const std::string s = require(flag);
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    while (!item.empty() && item.back() == ' ') item.pop_back();
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end || errno || v < 0 || v > 0x7fffffff)
      throw UsageError(flag + " expects comma-separated token ids, got '" + item + "'");
    ids.push_back(int(v));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return ids;
}

std::vector<std::string> Args::get_list(const std::string& flag, const std::string& fallback) const {
  std::vector<std::string> out;
  const std::string s = get(flag, fallback);
  size_t pos = 0;
  while (true) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (item.empty()) throw UsageError(flag + " has an empty item in '" + s + "'");
    out.push_back(item);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

int run_command(const char* name, const char* usage, int (*body)(const Args&), int argc, char** argv,
                std::set<std::string> valued, std::set<std::string> switches) {
  try {
    Args args(argc, argv, std::move(valued), std::move(switches));
    if (args.has("--help")) {
      fputs(usage, stdout);
      return 0;
    }
    return body(args);
  } catch (const UsageError& e) {
    fprintf(stderr, "cpuchat %s: %s\n%s", name, e.what(), usage);
    return 2;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg = msg.substr(0, nl);  // one line
    fprintf(stderr, "cpuchat %s: error: %s\n", name, msg.c_str());
    return 1;
  }
}

}  // namespace cpuchat
