// TokenConstraint implementations: a grammar over the output bytes (GBNF, JSON, JSON
// Schema, tool calls all compile to one) and logit_bias, plus the per-tokenizer token trie
// that makes a grammar step cheap on a 128K vocabulary.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cpuchat/constraint.h"
#include "cpuchat/tokenizer.h"
#include "engine/grammar.h"

namespace cpuchat {

// Every ordinary token's bytes in a trie, flattened in preorder so a walk is one loop that
// skips a whole subtree when its first byte is refused. Built once per tokenizer.
struct TokenTrie {
  struct Node {
    uint8_t byte;
    uint16_t depth;       // 1 for children of the root
    int32_t subtree_end;  // index one past this node's last descendant
    int32_t tokens_begin, tokens_end;  // tokens whose bytes end here: tokens[begin, end)
  };
  std::vector<Node> nodes;
  std::vector<int32_t> tokens;
  int vocab = 0;
  int max_depth = 0;
  std::vector<int> eos_ids;
  bool strip_leading_space = false;  // SentencePiece: the first piece's leading space is not output
  std::vector<std::string> token_bytes;  // every id's bytes as the decoder outputs them (specials: "")
  std::vector<bool> special;

  explicit TokenTrie(const Tokenizer& tok);
  // Shared by every request on the same tokenizer.
  static std::shared_ptr<const TokenTrie> of(const Tokenizer& tok);
};

// Constrains the output to the sentences of a grammar, with a budget guarantee: a token is
// allowed only if the grammar can still be completed in the tokens left after it (every
// byte is a token of its own in byte-level BPE and in SentencePiece with byte fallback, so
// n bytes never need more than n tokens). So the text is always a complete sentence by the
// time the budget runs out, and an EOS is allowed only where the grammar may end.
class GrammarConstraint final : public TokenConstraint {
 public:
  GrammarConstraint(std::shared_ptr<const grammar::Grammar> g, std::shared_ptr<const TokenTrie> trie);
  void mask(float* logits, int vocab, int remaining) override;
  void accept(int id) override;
  bool finished() const override;

  // Fewest tokens the shortest complete sentence can take (an upper bound: its byte count).
  uint32_t min_tokens() const { return matcher_.min_completion(matcher_.start()); }
  const std::string& text() const { return text_; }  // the bytes accepted so far
  bool failed() const { return state_ < 0; }
  size_t cached_masks() const { return cache_.size(); }

 private:
  // Per state: for each token, the fewest bytes needed to finish after it (kNever: refused).
  using TokenCosts = std::vector<uint32_t>;
  const TokenCosts& costs_for_state();
  void walk(int state, bool first_piece, TokenCosts& costs);

  std::shared_ptr<const TokenTrie> trie_;
  grammar::Matcher matcher_;
  int state_;
  bool first_piece_ = true;  // no ordinary token accepted yet
  std::string text_;
  static constexpr size_t kMaxCachedMasks = 48;
  std::unordered_map<int, TokenCosts> cache_;
  TokenCosts first_costs_;
  std::vector<int> walk_states_;
};

// logit_bias: adds a fixed bias to some tokens' logits (OpenAI: -100 bans, +100 forces).
class LogitBias final : public TokenConstraint {
 public:
  explicit LogitBias(std::vector<std::pair<int, float>> bias) : bias_(std::move(bias)) {}
  void mask(float* logits, int vocab, int remaining) override;
  void accept(int) override {}
  bool finished() const override { return false; }

 private:
  std::vector<std::pair<int, float>> bias_;
};

// Several constraints in order (logit_bias first, then the grammar, which has the last word).
class ConstraintChain final : public TokenConstraint {
 public:
  explicit ConstraintChain(std::vector<std::shared_ptr<TokenConstraint>> parts) : parts_(std::move(parts)) {}
  void mask(float* logits, int vocab, int remaining) override {
    for (auto& p : parts_) p->mask(logits, vocab, remaining);
  }
  void accept(int id) override {
    for (auto& p : parts_) p->accept(id);
  }
  bool finished() const override {
    for (auto& p : parts_)
      if (p->finished()) return true;
    return false;
  }

 private:
  std::vector<std::shared_ptr<TokenConstraint>> parts_;
};

}  // namespace cpuchat
