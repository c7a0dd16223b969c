// PRUNE beyond ViTs (issue 18): a BERT-style classifier (Hugging Face's
// layout: attention.self.query/key/value, attention.output.dense,
// intermediate.dense, output.dense) and a GPT-style causal decoder
// (attn.q_proj/k_proj/v_proj/out_proj, mlp.c_fc/c_proj) over token ids.
// The models and every reference number come from
// tests/fixtures/make_prune_text_models.py, run with Debian's
// /usr/bin/python3: parameter counts from the kept heads and neurons, and
// the loss and outputs of the original eager model with the removed heads'
// and neurons' outputs masked to zero (exact for both), against the pruned
// model.pt loaded by torch.jit.load.
#include <torch/script.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/engine/data/loss_kind.h"
#include "server/engine/model/model.h"
#include "server/engine/prune/prune.h"
#include "server/engine/prune/vit.h"
#include "tests/engine/test_util.h"

namespace compress::engine {
namespace {

using ::compress::engine::testing::FixturePath;
using ::compress::engine::testing::MakeTempDir;
using ::testing::HasSubstr;

std::string Python() { return "/usr/bin/python3 " + FixturePath("make_prune_text_models.py"); }

class TransformerPruneTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("test -x /usr/bin/python3") != 0) return;
    dir_ = new std::string(MakeTempDir());
    const std::string cmd = Python() + " make " + *dir_;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    expected_ =
        new nlohmann::json(nlohmann::json::parse(testutil::ReadFile(*dir_ + "/prune_text.json")));
  }
  void SetUp() override {
    if (expected_ == nullptr) GTEST_SKIP() << "no /usr/bin/python3 or no models";
  }
  static std::string Path(const std::string& name) { return *dir_ + "/" + name; }
  static const nlohmann::json& Expected() { return *expected_; }

  static torch::jit::Module Load(const std::string& name) {
    absl::StatusOr<torch::jit::Module> m = LoadModel(Path(name));
    EXPECT_TRUE(m.ok()) << m.status();
    return *m;
  }

  // What stock PyTorch says of the pruned model.pt against the original
  // with the report's removed heads and neurons masked (the script's check).
  static nlohmann::json Check(const std::string& kind, const PruneReport& r,
                              const std::string& data) {
    nlohmann::json kept;
    for (const PrunedBlock& b : r.blocks) {
      kept["blocks"].push_back({{"name", b.name}, {"heads", b.kept_heads},
                                {"neurons", b.kept_neurons}});
    }
    const std::string dir = MakeTempDir();
    std::ofstream(dir + "/kept.json") << kept.dump();
    const std::string cmd = Python() + " check " + kind + " " + Path(kind + ".pt") + " " +
                            r.model_path + " " + dir + "/kept.json " + Path(data) + " " + dir +
                            "/check.json";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return nlohmann::json::parse(testutil::ReadFile(dir + "/check.json"));
  }

  static std::string* dir_;
  static nlohmann::json* expected_;
};

std::string* TransformerPruneTest::dir_ = nullptr;
nlohmann::json* TransformerPruneTest::expected_ = nullptr;

void ExpectRelativelyNear(double got, double want, double tolerance) {
  EXPECT_LE(std::abs(got - want), tolerance * std::abs(want)) << got << " vs " << want;
}

TEST_F(TransformerPruneTest, FindsBertBlocksWithTheOutputProjectionBesideTheAttention) {
  torch::jit::Module m = Load("bert.pt");
  absl::StatusOr<VitStructure> vit = DiscoverVit(m, {1, 16}, torch::kLong);
  ASSERT_TRUE(vit.ok()) << vit.status();
  EXPECT_EQ(vit->style, "transformer");
  EXPECT_EQ(vit->dim, 32);
  EXPECT_EQ(vit->tokens, 16);
  ASSERT_EQ(vit->blocks.size(), 2u);
  const VitBlock& b = vit->blocks[1];
  EXPECT_EQ(b.path, "layer.1");
  EXPECT_EQ(b.attn, "layer.1.attention.self");
  EXPECT_EQ(b.heads_attr, "num_attention_heads");
  EXPECT_EQ(b.q, "layer.1.attention.self.query");
  EXPECT_EQ(b.v, "layer.1.attention.self.value");
  EXPECT_EQ(b.qkv, "");
  EXPECT_EQ(b.proj, "layer.1.attention.output.dense");
  EXPECT_EQ(b.fc1, "layer.1.intermediate.dense");
  EXPECT_EQ(b.fc2, "layer.1.output.dense");
  for (const VitBlock& blk : vit->blocks) {
    EXPECT_EQ(blk.heads, 4);
    EXPECT_EQ(blk.head_dim, 8);
    EXPECT_EQ(blk.hidden, 64);
    EXPECT_TRUE(blk.prunable_heads) << blk.fixed_heads;
  }
}

TEST_F(TransformerPruneTest, FindsGptBlocks) {
  torch::jit::Module m = Load("gpt.pt");
  absl::StatusOr<VitStructure> vit = DiscoverVit(m, {1, 16}, torch::kLong);
  ASSERT_TRUE(vit.ok()) << vit.status();
  ASSERT_EQ(vit->blocks.size(), 2u);
  const VitBlock& b = vit->blocks[0];
  EXPECT_EQ(b.path, "h.0");
  EXPECT_EQ(b.heads_attr, "n_head");
  EXPECT_EQ(b.k, "h.0.attn.k_proj");
  EXPECT_EQ(b.proj, "h.0.attn.out_proj");
  EXPECT_EQ(b.fc1, "h.0.mlp.c_fc");
  EXPECT_EQ(b.fc2, "h.0.mlp.c_proj");
  EXPECT_TRUE(b.prunable_heads) << b.fixed_heads;
  EXPECT_EQ(b.heads, 4);
}

// q/k/v Linears without a head count attribute: refused at upload and by
// the run with one message naming what was found and what is missing.
TEST_F(TransformerPruneTest, AnAttentionWithoutAHeadCountIsRefusedWithWhatIsMissing) {
  const absl::Status upload = CheckPrunableModelFile(Path("noheads.pt"));
  EXPECT_EQ(upload.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(upload.message()),
              HasSubstr("not a transformer PRUNE can prune"));
  EXPECT_THAT(std::string(upload.message()),
              HasSubstr("found: h.0.attn has Linears q_proj/k_proj/v_proj but no int head count "
                        "attribute (num_heads, n_head, n_heads, num_attention_heads, nhead, "
                        "heads)"));
  PruneOptions o;
  o.model_path = Path("noheads.pt");
  o.calibration_dataset = Path("lm_calib.safetensors");
  o.loss = LossKind::kLanguageModeling;
  o.output_dir = MakeTempDir();
  const absl::Status run = RunPruning(o, nullptr, nullptr).status();
  EXPECT_EQ(run.code(), upload.code());
  EXPECT_EQ(run.message(), upload.message());
}

PruneOptions Options(const std::string& model, const std::string& calibration) {
  PruneOptions o;
  o.model_path = model;
  o.calibration_dataset = calibration;
  o.num_samples = 64;
  o.saliency_samples = 64;
  o.batch_size = 32;
  o.target = PruneTargetKind::kFlops;
  o.target_fraction = 0.4;
  o.steps = 2;
  o.head_group = 1;
  o.mlp_group = 8;
  o.min_mlp = 8;
  o.recovery_steps = 0;
  o.measure_latency = false;
  o.output_dir = MakeTempDir();
  return o;
}

// Counts, loss and outputs a pruned model must agree on with PyTorch.
void ExpectPrunedAsPyTorch(const PruneReport& r, const nlohmann::json& py, bool recovered) {
  EXPECT_TRUE(r.target_met);
  EXPECT_GE(r.achieved_fraction, 0.4);
  int64_t heads_removed = 0;
  for (const PrunedBlock& b : r.blocks) heads_removed += b.heads_before - b.heads_after;
  EXPECT_GT(heads_removed, 0) << "the test means to cover head removal";
  EXPECT_EQ(r.params_after, py["expected_parameters"].get<int64_t>());
  EXPECT_EQ(r.params_after, py["pruned_parameters"].get<int64_t>());
  // The engine's loss of its final model on the calibration data.
  ExpectRelativelyNear(r.rounds.back().loss_after_recovery, py["pruned_loss"].get<double>(),
                       1e-5);
  if (!recovered) {
    // Physically removed = masked in the original, exactly.
    ExpectRelativelyNear(py["pruned_loss"].get<double>(), py["masked_loss"].get<double>(), 1e-5);
    EXPECT_NEAR(py["pruned_output_sum"].get<double>(), py["masked_output_sum"].get<double>(),
                1e-4 * std::abs(py["masked_output_sum"].get<double>()) + 1e-3);
  }
}

TEST_F(TransformerPruneTest, BertPrunedToAFlopsTargetEqualsTheMaskedOriginal) {
  PruneOptions o = Options(Path("bert.pt"), Path("cls_calib.pt"));
  o.eval_dataset = Path("cls_eval.pt");
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->style, "transformer");
  EXPECT_EQ(r->params_before, Expected()["bert"]["num_parameters"].get<int64_t>());
  ASSERT_EQ(r->blocks.size(), 2u);
  EXPECT_EQ(r->blocks[0].name, "layer.0");
  ExpectPrunedAsPyTorch(*r, Check("bert", *r, "cls_calib.pt"), /*recovered=*/false);
  ASSERT_TRUE(r->accuracy_after.has_value());
  const nlohmann::json eval = Check("bert", *r, "cls_eval.pt");
  EXPECT_NEAR(*r->accuracy_after, eval["pruned_accuracy"].get<double>(), 1e-9);
}

TEST_F(TransformerPruneTest, BertWithRecoveryLowersTheLossAndReloadsInPyTorch) {
  PruneOptions o = Options(Path("bert.pt"), Path("cls_calib.pt"));
  o.eval_dataset = Path("cls_eval.pt");
  o.recovery_steps = 30;
  o.learning_rate = 1e-3;
  o.measure_latency = true;  // the blocks are timed alone
  o.latency_batch = 8;
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectPrunedAsPyTorch(*r, Check("bert", *r, "cls_calib.pt"), /*recovered=*/true);
  for (const PruneRound& round : r->rounds) {
    EXPECT_LT(round.loss_after_recovery, round.loss_before_recovery) << round.round;
  }
  EXPECT_TRUE(r->latency_after_ms.has_value());
  const nlohmann::json eval = Check("bert", *r, "cls_eval.pt");
  EXPECT_NEAR(*r->accuracy_after, eval["pruned_accuracy"].get<double>(), 1e-9);
}

TEST_F(TransformerPruneTest, GptPrunedUnderTheLanguageModelingLossEqualsTheMaskedOriginal) {
  PruneOptions o = Options(Path("gpt.pt"), Path("lm_calib.safetensors"));
  o.loss = LossKind::kLanguageModeling;
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->params_before, Expected()["gpt"]["num_parameters"].get<int64_t>());
  EXPECT_EQ(r->blocks[1].name, "h.1");
  ExpectPrunedAsPyTorch(*r, Check("gpt", *r, "lm_calib.safetensors"), /*recovered=*/false);
}

TEST_F(TransformerPruneTest, GptWithRecoveryLowersTheLoss) {
  PruneOptions o = Options(Path("gpt.pt"), Path("lm_calib.safetensors"));
  o.loss = LossKind::kLanguageModeling;
  o.recovery_steps = 30;
  o.learning_rate = 1e-3;
  absl::StatusOr<PruneReport> r = RunPruning(o, nullptr, nullptr);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectPrunedAsPyTorch(*r, Check("gpt", *r, "lm_calib.safetensors"), /*recovered=*/true);
  for (const PruneRound& round : r->rounds) {
    EXPECT_LT(round.loss_after_recovery, round.loss_before_recovery) << round.round;
  }
}

}  // namespace
}  // namespace compress::engine
