// cpuchat bench-constrained: what grammar-constrained decoding costs per token, against free
// decoding of the same model. Two numbers per shape, from the same process:
//   - decode tokens/s free vs constrained (a JSON Schema answer; alternating runs, medians),
//   - the constraint's own time per token (mask + accept, timed around the calls), the
//     noise-free part of the difference.
//   - 8 streams at once through the engine's batched scheduler, free vs constrained: how much
//     the step time grows when every sequence of a step is constrained (the masks of one step
//     are computed in parallel).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/commands.h"
#include "cpuchat/engine.h"
#include "engine/json_schema.h"
#include "engine/token_constraint.h"

namespace cpuchat {

namespace {

using Clock = std::chrono::steady_clock;

const char* kUsage =
    "usage: cpuchat bench-constrained (--synthetic SHAPE | --model PATH) [--tokenizer PATH] [--threads N]\n"
    "                                 [--gen-tokens 96] [--repeat 3] [--no-warmup] [--backend int4] [--json FILE]\n"
    "  SHAPE: llama3.1-8b, llama3.2-1b, ... (random weights); --tokenizer: a vocabulary for it\n"
    "  (e.g. ../shared/models/meta/llama31-tiny-random: Llama 3's 128K tokens)\n";

// A typical structured answer: strings (the common state), an enum, numbers, an array.
const char* kSchema = R"({"type": "object", "properties": {
  "name": {"type": "string"}, "city": {"type": "string"}, "kind": {"enum": ["person", "place", "thing"]},
  "age": {"type": "integer", "minimum": 0, "maximum": 150}, "tags": {"type": "array", "items": {"type": "string"}},
  "notes": {"type": "string"}}, "required": ["name", "city", "kind", "age", "tags", "notes"], "additionalProperties": false})";

// Times the calls into the wrapped constraint.
class TimedConstraint final : public TokenConstraint {
 public:
  explicit TimedConstraint(std::shared_ptr<TokenConstraint> c) : c_(std::move(c)) {}
  void mask(float* logits, int vocab, int remaining) override {
    const auto t = Clock::now();
    c_->mask(logits, vocab, remaining);
    seconds += std::chrono::duration<double>(Clock::now() - t).count();
    ++calls;
  }
  void accept(int id) override {
    const auto t = Clock::now();
    c_->accept(id);
    seconds += std::chrono::duration<double>(Clock::now() - t).count();
  }
  bool finished() const override { return c_->finished(); }
  double seconds = 0;
  int calls = 0;

 private:
  std::shared_ptr<TokenConstraint> c_;
};

constexpr int kStreams = 8;

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int body(const Args& a) {
  if (a.has("--model") == a.has("--synthetic")) throw UsageError("give exactly one of --model and --synthetic");
  LoadOptions o;
  o.model_path = a.get("--model");
  o.synthetic = a.get("--synthetic");
  o.tokenizer_path = a.get("--tokenizer");
  o.backend = parse_backend(a.get("--backend", "int4"));
  o.threads = int(a.get_int("--threads", 0, 0, 1024));
  const int gen = int(a.get_int("--gen-tokens", 96, 8, 4096));
  const int repeat = int(a.get_int("--repeat", 3, 1, 100));
  o.ctx = 64 + gen + 8;
  o.batch.slots = std::max(o.batch.slots, kStreams);
  auto engine = Engine::load(o);
  const ModelInfo& info = engine->info();
  const Tokenizer& tok = engine->tokenizer();  // throws if there is none
  const auto grammar = std::make_shared<const grammar::Grammar>(grammar::parse_gbnf(grammar::json_schema_to_gbnf(nlohmann::ordered_json::parse(kSchema))));
  const auto trie_start = Clock::now();
  const auto trie = TokenTrie::of(tok);
  const double trie_s = std::chrono::duration<double>(Clock::now() - trie_start).count();
  fprintf(stderr, "%s %s, %d threads, vocabulary %d (trie of %zu nodes built in %.0f ms)\n", info.name.c_str(), info.backend.c_str(),
          info.threads, tok.vocab_size(), trie->nodes.size(), trie_s * 1e3);

  const uint32_t shortest = GrammarConstraint(grammar, trie).min_tokens();
  if (uint32_t(gen) < shortest)
    throw UsageError("--gen-tokens " + std::to_string(gen) + " is below the shortest valid answer (" + std::to_string(shortest) + " tokens)");
  std::vector<int> prompt = encode_chat(tok, {{"user", "Describe a person as JSON."}});
  std::vector<double> free_tps, constrained_tps, constraint_ms, masks;
  std::string sample;
  std::vector<int> sample_ids;
  const int first = a.has("--no-warmup") ? 1 : 0;
  for (int r = first; r <= repeat; ++r) {  // r == 0 warms up
    GenerateRequest req;
    req.prompt_ids = prompt;
    req.max_tokens = gen;
    req.sampling.seed = 1000 + r;
    req.ignore_eos = true;
    GenerateResult f = engine->new_session()->generate(req);
    auto timed = std::make_shared<TimedConstraint>(std::make_shared<GrammarConstraint>(grammar, trie));
    req.constraint = timed;
    req.ignore_eos = false;
    GenerateResult c = engine->new_session()->generate(req);
    if (r == 0) continue;
    free_tps.push_back(f.metrics.decode_tokens_per_s);
    constrained_tps.push_back(c.metrics.decode_tokens_per_s);
    constraint_ms.push_back(timed->seconds * 1e3 / std::max(1, timed->calls));
    masks.push_back(timed->calls);
    sample = c.text;
    sample_ids = c.ids;
    fprintf(stderr, "run %d: free %.2f tok/s, constrained %.2f tok/s (%d tokens, %s), constraint %.3f ms/token\n", r,
            f.metrics.decode_tokens_per_s, c.metrics.decode_tokens_per_s, c.metrics.completion_tokens, c.finish_reason.c_str(),
            constraint_ms.back());
  }
  // kStreams requests at once, all free or all constrained: the batch's step time is 1 / the
  // median stream's decode rate (each stream takes one row of every step while it decodes).
  auto batched_step_ms = [&](bool constrained, int round) {
    std::vector<std::shared_ptr<Generation>> gens;
    for (int i = 0; i < kStreams; ++i) {
      GenerateRequest req;
      req.prompt_ids = prompt;
      req.max_tokens = gen;
      req.sampling.seed = 2000 + 100 * round + i;
      req.ignore_eos = !constrained;
      if (constrained) req.constraint = std::make_shared<GrammarConstraint>(grammar, trie);
      gens.push_back(engine->submit(req));
    }
    std::vector<double> tps;
    for (auto& g : gens) tps.push_back(g->wait().metrics.decode_tokens_per_s);
    return 1e3 / std::max(1e-9, median(tps));
  };
  std::vector<double> free_step, constrained_step;
  for (int r = 1; r <= repeat; ++r) {  // alternating, as above
    free_step.push_back(batched_step_ms(false, r));
    constrained_step.push_back(batched_step_ms(true, r));
    fprintf(stderr, "run %d, %d streams batched: step %.1f ms free, %.1f ms constrained\n", r, kStreams, free_step.back(),
            constrained_step.back());
  }
  const double free_step_ms = median(free_step), constrained_step_ms = median(constrained_step);
  const double step_growth = constrained_step_ms / std::max(1e-9, free_step_ms) - 1;

  // The same answer's tokens replayed through fresh constraints without the model: the
  // constraint's cost alone (trie walks included: every replay starts with an empty mask
  // cache), the fastest of 5 so that other load on the machine counts least.
  double replay_ms = 0;
  std::vector<float> logits(info.vocab_size);
  for (int k = 0; k < 5 && !sample_ids.empty(); ++k) {
    GrammarConstraint c(grammar, trie);
    const auto t = Clock::now();
    for (size_t i = 0; i < sample_ids.size(); ++i) {
      std::fill(logits.begin(), logits.end(), 0.0f);
      c.mask(logits.data(), info.vocab_size, gen - int(i));
      c.accept(sample_ids[i]);
    }
    const double ms = std::chrono::duration<double>(Clock::now() - t).count() * 1e3 / sample_ids.size();
    replay_ms = k == 0 ? ms : std::min(replay_ms, ms);
  }
  const double free_med = median(free_tps), con_med = median(constrained_tps), ms = median(constraint_ms);
  const double free_ms_per_token = 1e3 / std::max(1e-9, free_med);
  const double measured = free_med / std::max(1e-9, con_med) - 1;
  const double own = ms / free_ms_per_token;
  nlohmann::json row = {{"model", info.name}, {"backend", info.backend}, {"threads", info.threads}, {"vocab", tok.vocab_size()},
                        {"gen_tokens", gen}, {"repeat", repeat},
                        {"free_decode_tokens_per_s", free_med}, {"constrained_decode_tokens_per_s", con_med},
                        {"measured_overhead", measured}, {"constraint_ms_per_token", ms}, {"constraint_overhead", own},
                        {"replay_constraint_ms_per_token", replay_ms},
                        {"batched_8_streams", {{"streams", kStreams}, {"free_step_ms", free_step_ms},
                                               {"constrained_step_ms", constrained_step_ms}, {"step_time_growth", step_growth}}},
                        {"sample", sample}};
  printf("| model | threads | free tok/s | constrained tok/s | measured extra | constraint ms/token (in run) | constraint extra | replayed ms/token (best of 5) |\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  printf("| %s %s | %d | %.2f | %.2f | %+.1f %% | %.3f | %.2f %% | %.3f |\n", info.name.c_str(), info.backend.c_str(), info.threads, free_med,
         con_med, measured * 100, ms, own * 100, replay_ms);
  printf("%d concurrent streams batched: step %.1f ms free, %.1f ms constrained (%+.1f %%)\n", kStreams, free_step_ms,
         constrained_step_ms, step_growth * 100);
  if (a.has("--json")) {
    FILE* f = fopen(a.get("--json").c_str(), "w");
    if (!f) throw std::runtime_error(a.get("--json") + ": cannot write");
    fputs((row.dump(2) + "\n").c_str(), f);
    fclose(f);
  }
  return 0;
}

}  // namespace

int bench_constrained_command(int argc, char** argv) {
  return run_command("bench-constrained", kUsage, body, argc, argv,
                     {"--model", "--synthetic", "--tokenizer", "--threads", "--gen-tokens", "--repeat", "--backend", "--json"}, {"--no-warmup"});
}

}  // namespace cpuchat
