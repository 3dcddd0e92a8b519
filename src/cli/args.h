// A small flag parser for the subcommands: --name value, --name=value and boolean
// --switches; unknown flags and missing values are one-line errors.
#pragma once
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace cpuchat {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  // `valued`: flags that take a value; `switches`: boolean flags. "--help" is always known.
  Args(int argc, char** argv, std::set<std::string> valued, std::set<std::string> switches);

  bool has(const std::string& flag) const { return values_.count(flag) > 0; }
  std::string get(const std::string& flag, const std::string& fallback = "") const;
  std::string require(const std::string& flag) const;
  long long get_int(const std::string& flag, long long fallback, long long min, long long max) const;
  double get_double(const std::string& flag, double fallback, double min, double max) const;
  std::vector<int> get_ids(const std::string& flag) const;                  // "1,2,3"
  std::vector<std::string> get_list(const std::string& flag, const std::string& fallback) const;  // "a,b"

 private:
  std::map<std::string, std::string> values_;
};

// Runs a subcommand body, turning UsageError into "cpuchat CMD: ..." + exit code 2 and
// any other exception into a one-line error + exit code 1.
int run_command(const char* name, const char* usage, int (*body)(const Args&), int argc, char** argv,
                std::set<std::string> valued, std::set<std::string> switches);

}  // namespace cpuchat
