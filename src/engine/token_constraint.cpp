#include "engine/token_constraint.h"

#include <algorithm>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>

namespace cpuchat {

using grammar::kNever;

// ---- TokenTrie --------------------------------------------------------------------------

TokenTrie::TokenTrie(const Tokenizer& tok) {
  vocab = tok.vocab_size();
  eos_ids = tok.eos_ids;
  strip_leading_space = tok.strip_leading_space_on_decode;
  token_bytes.resize(vocab);
  special.resize(vocab);
  std::vector<int> order;
  for (int id = 0; id < vocab; ++id) {
    special[id] = tok.is_special(id);
    if (special[id]) continue;  // control tokens never stand for output text
    token_bytes[id] = tok.token_bytes(id);
    if (!token_bytes[id].empty()) order.push_back(id);
  }
  std::sort(order.begin(), order.end(), [&](int a, int b) { return token_bytes[a] < token_bytes[b]; });

  // Sorted strings -> preorder nodes: each string adds nodes for its bytes past the
  // common prefix with the previous one; `path` holds the open nodes (the current prefix).
  std::vector<int> path;
  const std::string* prev = nullptr;
  for (int id : order) {
    const std::string& s = token_bytes[id];
    size_t common = 0;
    if (prev)
      while (common < prev->size() && common < s.size() && (*prev)[common] == s[common]) ++common;
    while (path.size() > common) {
      nodes[path.back()].subtree_end = int32_t(nodes.size());
      path.pop_back();
    }
    for (size_t i = common; i < s.size(); ++i) {
      path.push_back(int(nodes.size()));
      nodes.push_back({uint8_t(s[i]), uint16_t(i + 1), 0, 0, 0});
    }
    Node& end = nodes[path.back()];
    if (end.tokens_begin == end.tokens_end) end.tokens_begin = end.tokens_end = int32_t(tokens.size());
    tokens.push_back(id);  // same-bytes tokens are adjacent in `order`, so ranges stay contiguous
    end.tokens_end = int32_t(tokens.size());
    max_depth = std::max(max_depth, int(s.size()));
    prev = &s;
  }
  while (!path.empty()) {
    nodes[path.back()].subtree_end = int32_t(nodes.size());
    path.pop_back();
  }
}

std::shared_ptr<const TokenTrie> TokenTrie::of(const Tokenizer& tok) {
  static std::mutex mutex;
  static std::map<const Tokenizer*, std::weak_ptr<const TokenTrie>> tries;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto t = tries[&tok].lock()) return t;
  auto t = std::make_shared<const TokenTrie>(tok);
  tries[&tok] = t;
  return t;
}

// ---- GrammarConstraint ------------------------------------------------------------------

GrammarConstraint::GrammarConstraint(std::shared_ptr<const grammar::Grammar> g, std::shared_ptr<const TokenTrie> trie)
    : trie_(std::move(trie)), matcher_(std::move(g)), state_(matcher_.start()) {}

// One pass over the trie from `state`: every token that stays inside the grammar gets
// the shortest completion after it. A refused byte skips its whole subtree.
void GrammarConstraint::walk(int state, bool first_piece, TokenCosts& costs) {
  costs.assign(trie_->vocab, kNever);
  walk_states_.assign(trie_->max_depth + 1, -1);
  walk_states_[0] = state;
  const auto& nodes = trie_->nodes;
  for (size_t i = 0; i < nodes.size();) {
    const TokenTrie::Node& n = nodes[i];
    const int from = walk_states_[n.depth - 1];
    // The decoder drops the first piece's leading space (SentencePiece): it is not output.
    const int to = (first_piece && n.depth == 1 && n.byte == ' ') ? from : matcher_.step(from, n.byte);
    if (to < 0) {
      i = size_t(n.subtree_end);
      continue;
    }
    walk_states_[n.depth] = to;
    const uint32_t cost = matcher_.min_completion(to);
    for (int32_t k = n.tokens_begin; k < n.tokens_end; ++k) costs[trie_->tokens[k]] = cost;
    ++i;
  }
  if (matcher_.accepting(state))
    for (int id : trie_->eos_ids)
      if (id < trie_->vocab) costs[id] = 0;
}

const GrammarConstraint::TokenCosts& GrammarConstraint::costs_for_state() {
  // Whether the leading space counts depends on the position, not only on the state: the
  // first piece is never cached.
  if (first_piece_ && trie_->strip_leading_space) {
    walk(state_, true, first_costs_);
    return first_costs_;
  }
  auto it = cache_.find(state_);
  if (it != cache_.end()) return it->second;
  if (cache_.size() >= kMaxCachedMasks) cache_.clear();
  TokenCosts& costs = cache_[state_];
  walk(state_, false, costs);
  return costs;
}

void GrammarConstraint::mask(float* logits, int vocab, int remaining) {
  constexpr float kRefused = -std::numeric_limits<float>::infinity();
  if (state_ < 0) {  // cannot happen through the engine (only allowed tokens are sampled)
    std::fill(logits, logits + vocab, kRefused);
    return;
  }
  const TokenCosts& costs = costs_for_state();
  // After this token, remaining - 1 tokens are left to finish in.
  const uint32_t limit = uint32_t(std::max(0, remaining - 1));
  const int n = std::min(vocab, trie_->vocab);
  int allowed = 0;
  for (int id = 0; id < n; ++id) {
    const bool ok = costs[id] <= limit;
    allowed += ok;
    if (!ok) logits[id] = kRefused;
  }
  for (int id = n; id < vocab; ++id) logits[id] = kRefused;  // padding rows past the tokenizer
  if (allowed == 0 && !trie_->eos_ids.empty() && trie_->eos_ids.front() < vocab)
    logits[trie_->eos_ids.front()] = 0;  // nothing fits (budget below the shortest sentence): end now
}

void GrammarConstraint::accept(int id) {
  if (state_ < 0 || id < 0 || id >= trie_->vocab || trie_->special[id]) return;
  std::string_view bytes = trie_->token_bytes[id];
  if (first_piece_ && trie_->strip_leading_space && !bytes.empty() && bytes[0] == ' ') bytes.remove_prefix(1);
  first_piece_ = false;
  state_ = matcher_.step(state_, bytes);
  text_ += bytes;
}

bool GrammarConstraint::finished() const { return state_ < 0 || matcher_.complete(state_); }

// ---- LogitBias --------------------------------------------------------------------------

void LogitBias::mask(float* logits, int vocab, int) {
  for (auto [id, b] : bias_)
    if (id >= 0 && id < vocab) logits[id] += b;
}

}  // namespace cpuchat
