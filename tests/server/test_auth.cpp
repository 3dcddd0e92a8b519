// The API key check (issue 12, items 6 and 7): the bearer scheme in any case, and a
// comparison whose time does not depend on the given key's length or matching prefix.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>

#include "server/auth.h"

using cpuchat::server::bearer_token;
using cpuchat::server::same_secret;

namespace {

TEST(Auth, BearerSchemeInAnyCase) {
  EXPECT_EQ(bearer_token("Bearer sk-1"), "sk-1");
  EXPECT_EQ(bearer_token("bearer sk-1"), "sk-1");
  EXPECT_EQ(bearer_token("BEARER   sk-1  "), "sk-1");
  EXPECT_EQ(bearer_token("Basic dXNlcjpwYXNz"), std::nullopt);
  EXPECT_EQ(bearer_token("Bearer"), std::nullopt);
  EXPECT_EQ(bearer_token("Bearer    "), std::nullopt);
  EXPECT_EQ(bearer_token(""), std::nullopt);
}

TEST(Auth, SameSecretIsExact) {
  const std::string key = "sk-0123456789abcdef";
  EXPECT_TRUE(same_secret(key, key));
  EXPECT_FALSE(same_secret(key + "x", key));
  EXPECT_FALSE(same_secret(key.substr(1), key));
  EXPECT_FALSE(same_secret("", key));
  EXPECT_FALSE(same_secret(std::string(key.size(), 'a'), key));
  EXPECT_FALSE(same_secret(key + std::string(1, '\0'), key));
}

// The old check returned at once on a length mismatch, so timing told an attacker the key's
// length. Interleaved rounds of each case; the medians must be within a factor of 3 (the
// early return was ~20x faster than a same-length comparison).
TEST(Auth, ComparisonTimeDoesNotRevealTheLength) {
  const std::string key(64, 'k');
  const std::string same_length(64, 'x'), shorter = "x", prefix_match = key.substr(0, 63) + "x";
  auto time_of = [&](const std::string& given) {
    const auto t0 = std::chrono::steady_clock::now();
    int matches = 0;
    for (int i = 0; i < 2000; ++i) matches += same_secret(given, key);
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(matches, 0);
    return ns;
  };
  std::vector<double> a, b, c;
  for (int round = 0; round < 15; ++round) {
    a.push_back(time_of(same_length));
    b.push_back(time_of(shorter));
    c.push_back(time_of(prefix_match));
  }
  auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  const double same = median(a), short_key = median(b), prefix = median(c);
  std::printf("[ measure ] same_secret ns/call: same length %.0f, length 1 %.0f, 63-byte prefix match %.0f\n",
              same / 2000, short_key / 2000, prefix / 2000);
  EXPECT_LT(std::max(same, short_key) / std::min(same, short_key), 3.0);
  EXPECT_LT(std::max(same, prefix) / std::min(same, prefix), 3.0);
}

}  // namespace
