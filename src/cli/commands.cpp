// The engine-facing subcommands: generate, logits, tokenize, detokenize, chat,
// perplexity, make-model. Output contracts (JSON shapes) are used by tests and benchmarks.
#include "cli/commands.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/args.h"
#include "cpuchat/engine.h"
#include "model/make_model.h"

namespace cpuchat {

using nlohmann::json;

namespace {

const std::set<std::string> kModelFlags = {"--model", "--tokenizer", "--backend", "--quant", "--threads", "--ctx", "--kv-type"};
const char* kModelUsage =
    "  --model PATH       HF dir, Meta dir, llama2.c .bin or .gguf\n"
    "  --tokenizer FILE   tokenizer override (required for llama2.c .bin)\n"
    "  --backend B        int4 (default for chat/serve), bf16 or fp32\n"
    "  --quant Q          int4 weights: q4k (default), q4g32 or q4c\n"
    "  --threads N        default: physical cores\n"
    "  --ctx N            context length (default: min(model, 4096))\n"
    "  --kv-type T        KV cache storage: fp32, bf16 or int8 (default bf16; logits: fp32)\n"
    "  --cache-packed     save/load the int4-packed weights next to the model\n";

std::set<std::string> with(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

LoadOptions load_options(const Args& a, Backend default_backend, bool require_tokenizer = true,
                         KVType default_kv = KVType::BF16) {
  LoadOptions o;
  o.model_path = a.require("--model");
  o.tokenizer_path = a.get("--tokenizer");
  try {
    o.backend = a.has("--backend") ? parse_backend(a.get("--backend")) : default_backend;
    o.quant = parse_quant(a.get("--quant", "q4k"));
    o.kv_type = a.has("--kv-type") ? parse_kv_type(a.get("--kv-type")) : default_kv;
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  o.threads = int(a.get_int("--threads", 0, 0, 1024));
  o.ctx = int(a.get_int("--ctx", 0, 0, 1 << 24));
  o.cache_packed = a.has("--cache-packed");
  o.require_tokenizer = require_tokenizer;
  return o;
}

json metrics_json(const Metrics& m) {
  return {{"ttft_s", m.ttft_s},
          {"prompt_tokens", m.prompt_tokens},
          {"prompt_tokens_processed", m.prompt_tokens_processed},
          {"prompt_tokens_per_s", m.prompt_tokens_per_s},
          {"completion_tokens", m.completion_tokens},
          {"decode_tokens_per_s", m.decode_tokens_per_s},
          {"total_time_s", m.total_time_s},
          {"peak_rss_bytes", peak_rss_bytes()}};
}

std::string metrics_line(const Metrics& m) {
  char buf[256];
  snprintf(buf, sizeof buf, "[first token %.3f s | %.1f tokens/s | %d prompt tokens (%d run) at %.1f tokens/s | %d tokens in %.2f s]",
           m.ttft_s, m.decode_tokens_per_s, m.prompt_tokens, m.prompt_tokens_processed, m.prompt_tokens_per_s,
           m.completion_tokens, m.total_time_s);
  return buf;
}

SamplingParams sampling_from(const Args& a, float default_temperature) {
  SamplingParams s;
  s.temperature = float(a.get_double("--temperature", default_temperature, 0, 2));
  s.top_k = int(a.get_int("--top-k", 40, 0, 1 << 20));
  s.top_p = float(a.get_double("--top-p", 0.95, 0, 1));
  s.min_p = float(a.get_double("--min-p", 0.05, 0, 1));
  s.repetition_penalty = float(a.get_double("--repeat-penalty", 1.0, 0.01, 10));
  if (a.has("--seed")) s.seed = uint64_t(a.get_int("--seed", 0, 0, (1ll << 62)));
  return s;
}

const std::set<std::string> kSamplingFlags = {"--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "--seed"};

// ---- generate -------------------------------------------------------------------------

const std::string kGenerateUsage = std::string("usage: cpuchat generate --model PATH (--prompt TEXT | --ids 1,2,3) [--max-tokens N] [--temperature T]\n"
    "                        [--seed S] [--top-k K] [--top-p P] [--min-p P] [--ignore-eos] [--chat] [--json]\n") + kModelUsage;

int generate_body(const Args& a) {
  if (a.has("--prompt") == a.has("--ids")) throw UsageError("give exactly one of --prompt and --ids");
  GenerateRequest req;  // every flag is checked before the (slow) load
  req.max_tokens = int(a.get_int("--max-tokens", 128, 1, 1 << 24));
  req.sampling = sampling_from(a, 0.8f);
  req.ignore_eos = a.has("--ignore-eos");
  if (a.has("--ids")) req.prompt_ids = a.get_ids("--ids");
  const LoadOptions options = load_options(a, Backend::INT4, /*require_tokenizer=*/a.has("--prompt"));
  auto engine = Engine::load(options);
  if (a.has("--chat")) {
    req.prompt_ids = encode_chat(engine->tokenizer(), {{"user", a.get("--prompt")}});
  } else if (a.has("--prompt")) {
    const Tokenizer& tok = engine->tokenizer();
    req.prompt_ids = tok.encode(a.get("--prompt"));
    if (tok.bos_id >= 0) req.prompt_ids.insert(req.prompt_ids.begin(), tok.bos_id);
  }
  auto session = engine->new_session();
  const bool as_json = a.has("--json");
  GenerateResult r = session->generate(req, [&](const TokenEvent& ev) {
    if (!as_json) {
      fputs(ev.text.c_str(), stdout);
      fflush(stdout);
    }
    return true;
  });
  if (as_json) {
    json out = {{"ids", r.ids}, {"text", r.text}, {"finish_reason", r.finish_reason}, {"metrics", metrics_json(r.metrics)}};
    out["metrics"]["load_time_s"] = engine->info().load_time_s;
    out["metrics"]["backend"] = engine->info().backend;
    out["metrics"]["isa"] = engine->info().isa;
    out["metrics"]["threads"] = engine->info().threads;
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl;
  } else {
    fprintf(stdout, "\n");
    fprintf(stderr, "%s finish: %s\n", metrics_line(r.metrics).c_str(), r.finish_reason.c_str());
  }
  return 0;
}

// ---- logits ---------------------------------------------------------------------------

const std::string kLogitsUsage = std::string("usage: cpuchat logits --model PATH --ids 1,2,3 [--top K] [--backend fp32|bf16|int4]\n") + kModelUsage;

int logits_body(const Args& a) {
  const auto ids = a.get_ids("--ids");
  const int top = int(a.get_int("--top", 5, 1, 1000));
  // The exact fp32 path by default: the logits fixtures compare against a float reference.
  auto engine = Engine::load(load_options(a, Backend::FP32, /*require_tokenizer=*/false, KVType::FP32));
  const int vocab = engine->info().vocab_size;
  const std::vector<float> logits = engine->logits(ids);
  json positions = json::array();
  std::vector<int> order(vocab);
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    const float* row = logits.data() + pos * size_t(vocab);
    double max = row[0], sum_sq = 0;
    int argmax = 0;
    for (int i = 0; i < vocab; ++i) {
      if (row[i] > max) max = row[argmax = i];
      sum_sq += double(row[i]) * row[i];
    }
    double sum = 0;
    for (int i = 0; i < vocab; ++i) sum += std::exp(double(row[i]) - max);
    for (int i = 0; i < vocab; ++i) order[i] = i;
    const int k = std::min(top, vocab);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int x, int y) { return row[x] > row[y]; });
    json top_list = json::array();
    for (int i = 0; i < k; ++i) top_list.push_back({order[i], row[order[i]]});
    positions.push_back({{"pos", pos}, {"argmax", argmax}, {"top", top_list},
                         {"logsumexp", max + std::log(sum)}, {"l2_norm", std::sqrt(sum_sq)}});
  }
  std::cout << json{{"positions", positions}}.dump() << std::endl;
  return 0;
}

// ---- tokenize / detokenize ------------------------------------------------------------

// A tokenizer from --tokenizer, or the one of --model (a directory's file, or the one a
// .gguf embeds, which needs the checkpoint mapped).
struct TokenizerSource {
  std::unique_ptr<Tokenizer> own;
  std::unique_ptr<Engine> engine;
  const Tokenizer& get() const { return own ? *own : engine->tokenizer(); }
};

TokenizerSource tokenizer_from(const Args& a) {
  TokenizerSource src;
  if (a.has("--tokenizer")) {
    src.own = load_tokenizer(a.get("--tokenizer"));
  } else if (!a.has("--model")) {
    throw UsageError("give --model PATH or --tokenizer FILE");
  } else {
    LoadOptions o;
    o.model_path = a.get("--model");
    o.backend = Backend::BF16;  // weights stay mapped, nothing is converted for bf16 files
    src.engine = Engine::load(o);
  }
  return src;
}

const char* kTokenizeUsage = "usage: cpuchat tokenize (--model PATH | --tokenizer FILE) --text TEXT [--bos] [--special]\n";

int tokenize_body(const Args& a) {
  const std::string text = a.require("--text");
  auto src = tokenizer_from(a);
  const Tokenizer& tok = src.get();
  std::vector<int> ids = tok.encode(text, a.has("--special"));
  if (a.has("--bos") && tok.bos_id >= 0) ids.insert(ids.begin(), tok.bos_id);
  std::cout << json{{"ids", ids}}.dump() << std::endl;
  return 0;
}

const char* kDetokenizeUsage = "usage: cpuchat detokenize (--model PATH | --tokenizer FILE) --ids 1,2,3 [--skip-special]\n";

int detokenize_body(const Args& a) {
  const auto ids = a.get_ids("--ids");
  auto src = tokenizer_from(a);
  const Tokenizer& tok = src.get();
  for (int id : ids)
    if (id >= tok.vocab_size()) throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
  std::cout << json{{"text", tok.decode(ids, a.has("--skip-special"))}}.dump(-1, ' ', false, json::error_handler_t::replace)
            << std::endl;
  return 0;
}

// ---- chat -----------------------------------------------------------------------------

const std::string kChatUsage = std::string("usage: cpuchat chat --model PATH [--system TEXT] [--max-tokens N] [--temperature T] [--seed S]\n") + kModelUsage;

int chat_body(const Args& a) {
  GenerateRequest req;
  req.max_tokens = int(a.get_int("--max-tokens", 512, 1, 1 << 24));
  req.sampling = sampling_from(a, 0.7f);
  auto engine = Engine::load(load_options(a, Backend::INT4));
  const ModelInfo& info = engine->info();
  fprintf(stderr, "cpuchat: %s (%s, %s%s%s, %d threads, ctx %d) loaded in %.2f s. Empty line or Ctrl-D quits, /reset starts over.\n",
          info.name.c_str(), info.format.c_str(), info.backend.c_str(), info.isa.empty() ? "" : " ", info.isa.c_str(),
          info.threads, info.ctx, info.load_time_s);
  auto session = engine->new_session();
  std::vector<ChatMessage> history;
  if (a.has("--system")) history.push_back({"system", a.get("--system")});
  const size_t system_turns = history.size();
  std::string line;
  while (true) {
    fputs("\n> ", stdout);
    fflush(stdout);
    if (!std::getline(std::cin, line) || line.empty()) break;
    if (line == "/reset") {
      history.resize(system_turns);
      continue;
    }
    history.push_back({"user", line});
    req.prompt_ids = encode_chat(engine->tokenizer(), history);
    try {
      GenerateResult r = session->generate(req, [](const TokenEvent& ev) {
        fputs(ev.text.c_str(), stdout);
        fflush(stdout);
        return true;
      });
      history.push_back({"assistant", r.text});
      fprintf(stdout, "\n%s\n", metrics_line(r.metrics).c_str());
    } catch (const ContextOverflow& e) {
      fprintf(stdout, "\n[%s; /reset to start over]\n", e.what());
      history.pop_back();
    }
  }
  return 0;
}

// ---- perplexity -----------------------------------------------------------------------

const std::string kPerplexityUsage = std::string("usage: cpuchat perplexity --model PATH --text FILE [--backend B] [--ctx N] [--json]\n") + kModelUsage;

int perplexity_body(const Args& a) {
  const std::string path = a.require("--text");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  auto engine = Engine::load(load_options(a, Backend::INT4));
  const Tokenizer& tok = engine->tokenizer();
  const int vocab = engine->info().vocab_size;
  const int window = engine->info().ctx;
  std::vector<int> ids = tok.encode(ss.str());
  if (ids.size() < 2) throw std::runtime_error(path + ": too little text to score");
  // Independent windows of the context length, each starting with BOS.
  double nll = 0;
  int64_t scored = 0;
  for (size_t start = 0; start < ids.size(); start += size_t(window - 1)) {
    std::vector<int> chunk;
    if (tok.bos_id >= 0) chunk.push_back(tok.bos_id);
    chunk.insert(chunk.end(), ids.begin() + start, ids.begin() + std::min(ids.size(), start + window - chunk.size()));
    if (chunk.size() < 2) break;
    const std::vector<float> logits = engine->logits(chunk);
    for (size_t i = 0; i + 1 < chunk.size(); ++i) {
      const float* row = logits.data() + i * size_t(vocab);
      double max = *std::max_element(row, row + vocab), sum = 0;
      for (int v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - max);
      nll += max + std::log(sum) - row[chunk[i + 1]];
      ++scored;
    }
    if (start + (chunk.size() - (tok.bos_id >= 0)) >= ids.size()) break;
  }
  const double ppl = std::exp(nll / double(scored));
  if (a.has("--json"))
    std::cout << json{{"perplexity", ppl}, {"tokens", scored}, {"backend", engine->info().backend}, {"quant", engine->info().quant}}.dump()
              << std::endl;
  else
    printf("perplexity %.4f over %lld tokens (%s%s%s)\n", ppl, (long long)scored, engine->info().backend.c_str(),
           engine->info().quant.empty() ? "" : " ", engine->info().quant.c_str());
  return 0;
}

// ---- make-model -----------------------------------------------------------------------

const char* kMakeModelUsage =
    "usage: cpuchat make-model --shape llama3.1-8b|llama3.2-3b|llama3.2-1b|tiny --out DIR [--dtype bf16|fp32] [--seed S]\n"
    "                          [--tokenizer FILE]  (copied into DIR)\n";

int make_model_body(const Args& a) {
  MakeModelOptions o;
  o.shape = a.require("--shape");
  o.out_dir = a.require("--out");
  o.dtype = a.get("--dtype", "bf16");
  o.seed = uint64_t(a.get_int("--seed", 1, 0, (1ll << 62)));
  o.tokenizer = a.get("--tokenizer");
  const auto bytes = make_model(o);
  fprintf(stderr, "wrote %s (%.2f GB of weights), peak RSS %.1f MB\n", o.out_dir.c_str(), bytes / 1e9,
          peak_rss_bytes() / 1e6);
  return 0;
}

}  // namespace

int generate_command(int argc, char** argv) {
  return run_command("generate", kGenerateUsage.c_str(), generate_body, argc, argv,
                     with(with(kModelFlags, kSamplingFlags), {"--prompt", "--ids", "--max-tokens"}),
                     {"--ignore-eos", "--json", "--chat", "--cache-packed"});
}
int logits_command(int argc, char** argv) {
  return run_command("logits", kLogitsUsage.c_str(), logits_body, argc, argv, with(kModelFlags, {"--ids", "--top"}), {"--cache-packed"});
}
int tokenize_command(int argc, char** argv) {
  return run_command("tokenize", kTokenizeUsage, tokenize_body, argc, argv, {"--model", "--tokenizer", "--text"},
                     {"--bos", "--special"});
}
int detokenize_command(int argc, char** argv) {
  return run_command("detokenize", kDetokenizeUsage, detokenize_body, argc, argv, {"--model", "--tokenizer", "--ids"},
                     {"--skip-special"});
}
int chat_command(int argc, char** argv) {
  return run_command("chat", kChatUsage.c_str(), chat_body, argc, argv,
                     with(with(kModelFlags, kSamplingFlags), {"--system", "--max-tokens"}), {"--cache-packed"});
}
int perplexity_command(int argc, char** argv) {
  return run_command("perplexity", kPerplexityUsage.c_str(), perplexity_body, argc, argv, with(kModelFlags, {"--text"}),
                     {"--json", "--cache-packed"});
}
int make_model_command(int argc, char** argv) {
  return run_command("make-model", kMakeModelUsage, make_model_body, argc, argv,
                     {"--shape", "--out", "--dtype", "--seed", "--tokenizer"}, {});
}

}  // namespace cpuchat
