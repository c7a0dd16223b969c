// compressctl end to end (RunCli) against the in-process fake server:
// exit codes, human and JSON output, watch, uploads, downloads.
#include "client/cli.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/util/sha256.h"
#include "tests/client/fake_server.h"

namespace compress::client {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using testing::FakeServer;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

struct Result {
  int code;
  std::string out;
  std::string err;
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "cli_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  Result Run(std::vector<std::string> args,
             const std::string& stdin_text = "") {
    std::istringstream in(stdin_text);
    std::ostringstream out;
    std::ostringstream err;
    CliEnvironment env;
    env.server = server_.address();
    env.in = &in;
    env.out = &out;
    env.err = &err;
    const int code = RunCli(args, env);
    return {code, out.str(), err.str()};
  }

  // A job whose log goes QUEUED -> RUNNING -> `final_state`.
  void ScriptJob(v1::JobState final_state, v1::JobResult result = {}) {
    std::vector<v1::JobEvent> events;
    events.push_back(
        testing::StateEvent(1, v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING));
    v1::JobEvent stage;
    stage.set_sequence(2);
    stage.mutable_stage_start()->set_stage("forward");
    stage.mutable_stage_start()->set_count(1);
    events.push_back(stage);
    events.push_back(testing::ProgressEvent(3, "forward", 1, 1));
    events.push_back(
        testing::StateEvent(4, v1::JOB_STATE_RUNNING, final_state));
    server_.jobs().ScriptNextSubmit(events, result);
  }

  FakeServer server_;
  fs::path dir_;
};

TEST_F(CliTest, HelpGoesToStdoutWithExitZero) {
  for (const char* flag : {"help", "--help", "-h"}) {
    Result r = Run({flag});
    EXPECT_EQ(r.code, kExitOk);
    EXPECT_EQ(r.out, UsageText());
  }
  Result r = Run({"model", "get", "--help"});
  EXPECT_EQ(r.code, kExitOk);
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  Result none = Run({});
  EXPECT_EQ(none.code, kExitUsage);
  EXPECT_THAT(none.err, StartsWith("usage: compressctl"));

  Result unknown = Run({"frobnicate"});
  EXPECT_EQ(unknown.code, kExitUsage);
  EXPECT_THAT(unknown.err, StartsWith("error: unknown command 'frobnicate'\n"));

  Result flag = Run({"model", "list", "--bogus"});
  EXPECT_EQ(flag.code, kExitUsage);
  EXPECT_THAT(flag.err, HasSubstr("usage: compressctl model list"));

  EXPECT_EQ(Run({"inspect", "--model", "m"}).code, kExitUsage);
  EXPECT_EQ(
      Run({"inspect", "--model", "m", "--data", "d", "--input-shape", "1"})
          .code,
      kExitUsage);
  Result shape = Run({"inspect", "--model", "m", "--input-shape", "1,0"});
  EXPECT_EQ(shape.code, kExitUsage);
  EXPECT_THAT(shape.err, HasSubstr("--input-shape"));
  EXPECT_EQ(Run({"job", "list", "--state", "done"}).code, kExitUsage);
  EXPECT_EQ(Run({"--timeout", "soon", "model", "list"}).code, kExitUsage);
  EXPECT_TRUE(server_.jobs().submitted().empty());
}

TEST_F(CliTest, RpcErrorsExitOneWithCodeAndMessage) {
  Result r = Run({"model", "get", "nope"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_EQ(r.err, "error: NOT_FOUND: model nope not found\n");
  EXPECT_EQ(r.out, "");
}

TEST_F(CliTest, UnreachableServerIsAnError) {
  std::ostringstream out, err;
  CliEnvironment env;
  env.out = &out;
  env.err = &err;
  // Port 1 on localhost: nothing listens there.
  EXPECT_EQ(
      RunCli({"--server", "localhost:1", "--timeout", "5", "model", "list"},
             env),
      kExitFailure);
  EXPECT_THAT(err.str(), StartsWith("error: UNAVAILABLE: "));
}

TEST_F(CliTest, ModelUploadListGetDelete) {
  const fs::path file = dir_ / "cnn.pt";
  std::ofstream(file) << "torchscript bytes";
  const std::string id = Sha256Hex("torchscript bytes");

  Result upload =
      Run({"--json", "model", "upload", file.string(), "--name", "cnn"});
  ASSERT_EQ(upload.code, kExitOk) << upload.err;
  v1::Model model;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(upload.out, &model).ok())
      << upload.out;
  EXPECT_EQ(model.id(), id);
  EXPECT_EQ(model.name(), "cnn");

  // The same bytes under another --name: the stored model, and a note that
  // its name did not change (issue 19).
  Result again = Run({"model", "upload", file.string(), "--name", "renamed"});
  ASSERT_EQ(again.code, kExitOk) << again.err;
  EXPECT_THAT(again.out, HasSubstr("name:       cnn\n"));
  EXPECT_THAT(again.err, HasSubstr("note: these bytes were already uploaded as model " + id +
                                   " \"cnn\"; its name is unchanged (--name \"renamed\" "
                                   "not applied)"));
  Result same = Run({"model", "upload", file.string(), "--name", "cnn"});
  EXPECT_EQ(same.err, "");

  Result list = Run({"model", "list"});
  ASSERT_EQ(list.code, kExitOk) << list.err;
  EXPECT_THAT(list.out, StartsWith("ID "));
  EXPECT_THAT(list.out, HasSubstr(id.substr(0, 12) + "  cnn"));
  EXPECT_THAT(list.out, Not(HasSubstr(id)));  // shortened

  // The 12-character prefix from the table is accepted.
  Result get = Run({"model", "get", id.substr(0, 12)});
  ASSERT_EQ(get.code, kExitOk) << get.err;
  EXPECT_THAT(get.out, HasSubstr("id:         " + id + "\n"));
  EXPECT_THAT(get.out, HasSubstr("format:     TORCHSCRIPT\n"));

  Result del = Run({"model", "delete", id.substr(0, 8)});
  ASSERT_EQ(del.code, kExitOk) << del.err;
  EXPECT_EQ(del.out, "deleted model " + id + "\n");
  EXPECT_EQ(Run({"model", "get", id}).code, kExitFailure);
}

TEST_F(CliTest, InspectWatchPrintsEventsAndLayerTable) {
  v1::JobResult result;
  v1::InspectResult* inspect = result.mutable_inspect();
  inspect->set_num_parameters(80);
  inspect->set_total_macs(56448);
  v1::LayerInspection* conv = inspect->add_layers();
  conv->set_name("conv");
  conv->set_kind("Conv2d");
  conv->set_numel(80);
  conv->set_macs(56448);
  ScriptJob(v1::JOB_STATE_SUCCEEDED, result);

  Result r = Run({"inspect", "--model", "m", "--input-shape", "1,1,28,28",
                  "--watch", "--seed", "7"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("state QUEUED -> RUNNING\n"
                               "stage forward started (1/1)\n"
                               "progress forward 1/1\n"
                               "state RUNNING -> SUCCEEDED\n"));
  EXPECT_THAT(r.out, HasSubstr("state:   SUCCEEDED\n"));
  EXPECT_THAT(r.out, HasSubstr("conv   Conv2d      80  56,448"));

  const std::vector<v1::SubmitJobRequest> submitted =
      server_.jobs().submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0].spec().inspect().model_id(), "m");
  EXPECT_THAT(submitted[0].spec().inspect().input_shape(),
              ElementsAre(1, 1, 28, 28));
  EXPECT_EQ(submitted[0].device(), "auto");
  EXPECT_EQ(submitted[0].seed(), 7u);
}

TEST_F(CliTest, InspectExpandsUniqueIdPrefixes) {
  v1::Model model;
  model.set_id(Sha256Hex("model"));
  server_.models().AddModel(model);
  ASSERT_EQ(Run({"inspect", "--model", model.id().substr(0, 12), "--data",
                 "builtin:fashion-mnist/test"})
                .code,
            kExitOk);
  ASSERT_EQ(Run({"inspect", "--model", "unknown", "--input-shape", "1"}).code,
            kExitOk);  // the fake accepts anything; a real server would not
  const std::vector<v1::SubmitJobRequest> submitted =
      server_.jobs().submitted();
  ASSERT_EQ(submitted.size(), 2u);
  EXPECT_EQ(submitted[0].spec().inspect().model_id(), model.id());
  EXPECT_EQ(submitted[0].spec().inspect().dataset_id(),
            "builtin:fashion-mnist/test");
  EXPECT_EQ(submitted[1].spec().inspect().model_id(), "unknown");
}

TEST_F(CliTest, QuantizeFlagsBuildTheSpecAndWatchPrintsTheTable) {
  v1::JobResult result;
  v1::QuantizeResult* q = result.mutable_quantize();
  v1::QuantizedLayer* l = q->add_layers();
  l->set_name("features.0");
  l->set_kind("Conv2d");
  l->set_numel(288);
  l->set_bits(4);
  l->set_bytes_before(1152);
  l->set_bytes_after(176);
  l->set_rounding("rtn");
  q->set_search("exact");
  q->set_average_bits(4);
  q->set_budget_met(true);
  q->set_bytes_before(1200);
  q->set_bytes_after(220);
  ScriptJob(v1::JOB_STATE_SUCCEEDED, result);

  Result r = Run({"quantize",
                  "--model",
                  "m",
                  "--data",
                  "d",
                  "--eval",
                  "e",
                  "--eval-samples",
                  "1000",
                  "--bits",
                  "3.5",
                  "--search",
                  "bisection",
                  "--max-drop",
                  "0.5",
                  "--gptq",
                  "--asymmetric",
                  "--granularity",
                  "group",
                  "--group-size",
                  "64",
                  "--candidates",
                  "2, 4,8",
                  "--pin",
                  "features.0=8,fc=32",
                  "--tie",
                  "a,b;c,d,e",
                  "--omega",
                  "trace",
                  "--sensitivity",
                  "job-1",
                  "--samples",
                  "128",
                  "--batch",
                  "32",
                  "--watch"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("features.0  Conv2d     288     4"));
  EXPECT_THAT(r.out, HasSubstr("size:         1,200 -> 220 bytes (5.5x)\n"));

  const std::vector<v1::SubmitJobRequest> submitted = server_.jobs().submitted();
  ASSERT_EQ(submitted.size(), 1u);
  const v1::QuantizeSpec& spec = submitted[0].spec().quantize();
  EXPECT_EQ(spec.model_id(), "m");
  EXPECT_EQ(spec.data().dataset_id(), "d");
  EXPECT_EQ(spec.data().num_samples(), 128);
  EXPECT_EQ(spec.data().batch_size(), 32);
  EXPECT_EQ(spec.eval_dataset_id(), "e");
  EXPECT_EQ(spec.eval_samples(), 1000);
  EXPECT_EQ(spec.budget().average_bits(), 3.5);
  EXPECT_EQ(spec.search(), v1::SEARCH_METHOD_ACCURACY_BISECTION);
  EXPECT_EQ(spec.tolerance().max_drop_pp(), 0.5);
  EXPECT_EQ(spec.quantizer().rounding(), v1::ROUNDING_GPTQ);
  EXPECT_TRUE(spec.quantizer().asymmetric());
  EXPECT_EQ(spec.quantizer().granularity(), v1::GRANULARITY_GROUP);
  EXPECT_EQ(spec.quantizer().group_size(), 64);
  EXPECT_THAT(spec.candidate_bits(), ElementsAre(2, 4, 8));
  ASSERT_EQ(spec.pins_size(), 2);
  EXPECT_EQ(spec.pins(0).layer(), "features.0");
  EXPECT_EQ(spec.pins(0).bits(), 8);
  EXPECT_EQ(spec.pins(1).layer(), "fc");
  EXPECT_EQ(spec.pins(1).bits(), 32);
  EXPECT_FALSE(spec.no_default_pins());
  ASSERT_EQ(spec.ties_size(), 2);
  EXPECT_THAT(spec.ties(0).layers(), ElementsAre("a", "b"));
  EXPECT_THAT(spec.ties(1).layers(), ElementsAre("c", "d", "e"));
  EXPECT_EQ(spec.sensitivity_job_id(), "job-1");
  EXPECT_EQ(spec.omega(), v1::OMEGA_TRACE);

  ASSERT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--bytes", "4096", "--pin", "none",
                 "--search", "uniform", "--max-relative-drop", "0.01"})
                .code,
            kExitOk);
  const v1::QuantizeSpec spec2 = server_.jobs().submitted()[1].spec().quantize();
  EXPECT_EQ(spec2.budget().model_bytes(), 4096);
  EXPECT_TRUE(spec2.no_default_pins());
  EXPECT_EQ(spec2.pins_size(), 0);
  EXPECT_EQ(spec2.search(), v1::SEARCH_METHOD_UNIFORM);
  EXPECT_EQ(spec2.tolerance().max_relative_drop(), 0.01);
  EXPECT_FALSE(spec2.quantizer().asymmetric());
  EXPECT_EQ(spec2.omega(), v1::OMEGA_UNSPECIFIED);  // the server's default

  ASSERT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--avg-bits", "3.5", "--omega",
                 "quadratic"})
                .code,
            kExitOk);
  EXPECT_EQ(server_.jobs().submitted()[2].spec().quantize().budget().average_bits(), 3.5);
  EXPECT_EQ(server_.jobs().submitted()[2].spec().quantize().omega(), v1::OMEGA_QUADRATIC);
  EXPECT_FALSE(server_.jobs().submitted()[2].spec().quantize().has_head_refit());

  ASSERT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--head-refit", "12",
                 "--head-hessian", "exact", "--head-alpha", "0.75"})
                .code,
            kExitOk);
  const v1::HeadRefitOptions h = server_.jobs().submitted()[3].spec().quantize().head_refit();
  EXPECT_EQ(h.iterations(), 12);
  EXPECT_EQ(h.hessian(), v1::HEAD_REFIT_HESSIAN_EXACT);
  EXPECT_EQ(h.alpha(), 0.75);
  EXPECT_NE(Run({"quantize", "--model", "m", "--data", "d", "--head-hessian", "kfac"}).code,
            kExitOk);
  EXPECT_NE(Run({"quantize", "--model", "m", "--data", "d", "--head-refit", "3",
                 "--head-hessian", "lbfgs"})
                .code,
            kExitOk);
}

// Token-id models: the probe's dtype, the language-modeling loss and its
// ignore id reach the specs; a language model's result shows perplexity.
TEST_F(CliTest, TokenFlagsBuildTheSpecsAndPerplexityIsShown) {
  v1::JobResult result;
  v1::QuantizeResult* q = result.mutable_quantize();
  q->set_search("exact");
  q->set_average_bits(4);
  q->set_budget_met(true);
  q->set_bytes_before(40576);
  q->set_bytes_after(9000);
  q->set_eval_examples(32);
  q->set_perplexity_before(9.0);
  q->set_perplexity_after(9.18);
  ScriptJob(v1::JOB_STATE_SUCCEEDED, result);
  Result r = Run({"quantize", "--model", "m", "--data", "d", "--eval", "e", "--loss", "lm",
                  "--watch"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("9.0000 -> 9.1800 (+2.00%) on 32 sequences"));
  EXPECT_THAT(r.out, Not(HasSubstr("top-1")));
  EXPECT_EQ(Run({"inspect", "--model", "m", "--input-shape", "1,16", "--input-dtype", "int64"})
                .code,
            kExitOk);
  EXPECT_EQ(Run({"analyze", "--model", "m", "--data", "d", "--loss", "language_modeling",
                 "--lm-ignore-id", "0"})
                .code,
            kExitOk);
  const std::vector<v1::SubmitJobRequest> submitted = server_.jobs().submitted();
  ASSERT_EQ(submitted.size(), 3u);
  EXPECT_EQ(submitted[0].spec().quantize().loss(), v1::LOSS_KIND_LANGUAGE_MODELING);
  EXPECT_FALSE(submitted[0].spec().quantize().has_lm_ignore_id());
  EXPECT_EQ(submitted[1].spec().inspect().input_dtype(), "int64");
  EXPECT_EQ(submitted[2].spec().analyze().loss(), v1::LOSS_KIND_LANGUAGE_MODELING);
  ASSERT_TRUE(submitted[2].spec().analyze().has_lm_ignore_id());
  EXPECT_EQ(submitted[2].spec().analyze().lm_ignore_id(), 0);

  Result bad = Run({"analyze", "--model", "m", "--data", "d", "--loss", "perplexity"});
  EXPECT_EQ(bad.code, kExitUsage);
  EXPECT_THAT(bad.err, HasSubstr("--loss: auto, cross_entropy"));
  EXPECT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--lm-ignore-id", "-1"}).code,
            kExitUsage);
}

TEST_F(CliTest, QuantizeUsageErrors) {
  EXPECT_EQ(Run({"quantize", "--model", "m"}).code, kExitUsage);
  Result budgets = Run({"quantize", "--model", "m", "--data", "d", "--bits", "4", "--bops", "9"});
  EXPECT_EQ(budgets.code, kExitUsage);
  EXPECT_THAT(budgets.err, HasSubstr("at most one of --bits, --bytes and --bops"));
  Result search = Run({"quantize", "--model", "m", "--data", "d", "--search", "greedy"});
  EXPECT_EQ(search.code, kExitUsage);
  EXPECT_THAT(search.err, HasSubstr("--search"));
  Result pin = Run({"quantize", "--model", "m", "--data", "d", "--pin", "conv1"});
  EXPECT_EQ(pin.code, kExitUsage);
  EXPECT_THAT(pin.err, HasSubstr("LAYER=BITS"));
  EXPECT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--bits", "four"}).code, kExitUsage);
  Result omega = Run({"quantize", "--model", "m", "--data", "d", "--omega", "hessian"});
  EXPECT_EQ(omega.code, kExitUsage);
  EXPECT_THAT(omega.err, HasSubstr("--omega: trace or quadratic"));
  EXPECT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--granularity", "row"}).code,
            kExitUsage);
  EXPECT_EQ(Run({"quantize", "--model", "m", "--data", "d", "--max-drop", "1",
                 "--max-relative-drop", "0.1"})
                .code,
            kExitUsage);
  EXPECT_TRUE(server_.jobs().submitted().empty());
}

TEST_F(CliTest, PruneAndCompressFlagsBuildTheSpecsAndWatchPrintsTheBlocks) {
  v1::JobResult result;
  v1::PruneResult* p = result.mutable_prune();
  p->set_saliency("hessian");
  p->set_target("flops");
  p->set_target_fraction(0.5);
  p->set_achieved_fraction(0.512);
  p->set_target_met(true);
  p->set_params_before(139018);
  p->set_params_after(70154);
  v1::PrunedBlock* b = p->add_blocks();
  b->set_name("blocks.0");
  b->set_heads_before(4);
  b->set_heads_after(2);
  b->set_mlp_before(128);
  b->set_mlp_after(48);
  b->set_prunable_heads(true);
  ScriptJob(v1::JOB_STATE_SUCCEEDED, result);
  Result r = Run({"prune", "--model", "m", "--data", "d", "--eval", "e", "--params", "0.3",
                  "--saliency", "magnitude", "--latency-weight", "0.5", "--head-group", "2",
                  "--mlp-group", "8", "--rounds", "3", "--recovery-steps", "50", "--lr", "0.001",
                  "--temperature", "2", "--optimizer", "sgd", "--saliency-samples", "128",
                  "--watch"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("blocks.0  4 -> 2  128 -> 48"));
  EXPECT_THAT(r.out, HasSubstr("parameters: 139,018 -> 70,154"));
  ASSERT_EQ(server_.jobs().submitted().size(), 1u);
  const v1::PruneSpec spec = server_.jobs().submitted()[0].spec().prune();
  EXPECT_EQ(spec.model_id(), "m");
  EXPECT_EQ(spec.eval_dataset_id(), "e");
  EXPECT_EQ(spec.target().params_fraction(), 0.3);
  EXPECT_EQ(spec.saliency(), v1::SALIENCY_MAGNITUDE);
  EXPECT_EQ(spec.latency_weight(), 0.5);
  EXPECT_EQ(spec.head_group(), 2);
  EXPECT_EQ(spec.mlp_group(), 8);
  EXPECT_EQ(spec.steps(), 3);
  EXPECT_EQ(spec.recovery().steps(), 50);
  EXPECT_EQ(spec.recovery().learning_rate(), 0.001);
  EXPECT_EQ(spec.recovery().temperature(), 2);
  EXPECT_EQ(spec.recovery().optimizer(), "sgd");
  EXPECT_EQ(spec.saliency_samples(), 128);

  ASSERT_EQ(Run({"compress", "--model", "m", "--data", "d", "--bits", "4", "--gptq"}).code,
            kExitOk);
  const v1::CompressSpec c = server_.jobs().submitted()[1].spec().compress();
  EXPECT_EQ(c.prune().model_id(), "m");
  EXPECT_EQ(c.prune().target().flops_fraction(), 0.5);  // the default target
  EXPECT_EQ(c.quantize().budget().average_bits(), 4);
  EXPECT_EQ(c.quantize().quantizer().rounding(), v1::ROUNDING_GPTQ);
  EXPECT_EQ(c.quantize().data().dataset_id(), "d");

  Result both = Run({"prune", "--model", "m", "--data", "d", "--flops", "0.5", "--latency", "0.5"});
  EXPECT_EQ(both.code, kExitUsage);
  EXPECT_THAT(both.err, HasSubstr("at most one of --flops, --params and --latency"));
  EXPECT_EQ(Run({"prune", "--model", "m", "--data", "d", "--saliency", "random"}).code,
            kExitUsage);
}

TEST_F(CliTest, WatchOfFailedJobExitsOne) {
  ScriptJob(v1::JOB_STATE_FAILED);
  Result r = Run({"inspect", "--model", "m", "--data", "d", "--watch"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.out, HasSubstr("state RUNNING -> FAILED"));
  EXPECT_EQ(server_.jobs().submitted()[0].spec().inspect().dataset_id(), "d");
}

TEST_F(CliTest, JobSubmitFromStdinAndJobWatchJson) {
  ScriptJob(v1::JOB_STATE_SUCCEEDED);
  Result r =
      Run({"job", "submit", "--spec-json", "-", "--device", "cpu",
           "--request-id", "r1", "--deadline", "60", "--json"},
          R"({"analyze": {"model_id": "m", "traces": {"enabled": true}}})");
  ASSERT_EQ(r.code, kExitOk) << r.err;
  const std::vector<v1::SubmitJobRequest> submitted =
      server_.jobs().submitted();
  ASSERT_EQ(submitted.size(), 1u);
  EXPECT_EQ(submitted[0].spec().analyze().model_id(), "m");
  EXPECT_TRUE(submitted[0].spec().analyze().traces().enabled());
  EXPECT_EQ(submitted[0].device(), "cpu");
  EXPECT_EQ(submitted[0].request_id(), "r1");
  EXPECT_EQ(submitted[0].deadline_seconds(), 60);
  v1::Job job;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(r.out, &job).ok())
      << r.out;
  EXPECT_EQ(job.kind(), v1::JOB_KIND_ANALYZE);

  Result watch = Run({"--json", "job", "watch", job.id()});
  ASSERT_EQ(watch.code, kExitOk) << watch.err;
  std::vector<std::string> lines =
      absl::StrSplit(watch.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u);  // four events, then the final job
  v1::JobEvent first;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(lines[0], &first).ok());
  EXPECT_EQ(first.sequence(), 1);
  v1::Job final_job;
  ASSERT_TRUE(
      google::protobuf::util::JsonStringToMessage(lines[4], &final_job).ok());
  EXPECT_EQ(final_job.state(), v1::JOB_STATE_SUCCEEDED);
}

// An INSPECT whose input does not fit gets a hint about the batch
// dimension (issue 19); other failures do not.
TEST_F(CliTest, InspectThatDoesNotFitHintsAtTheBatchDimension) {
  std::vector<v1::JobEvent> events = {
      testing::StateEvent(1, v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING),
      testing::StateEvent(2, v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED)};
  events[1].mutable_state_change()->mutable_error()->set_code(3);  // INVALID_ARGUMENT
  events[1].mutable_state_change()->mutable_error()->set_message("shape mismatch");
  server_.jobs().ScriptNextSubmit(events, {});
  Result r = Run({"inspect", "--model", "m", "--input-shape", "1,28,28", "--watch"});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("hint: --input-shape includes the batch dimension first "
                               "(e.g. 1,1,28,28 for one 28x28 grayscale image); this job's "
                               "was 1,28,28\n"));
  ScriptJob(v1::JOB_STATE_FAILED);  // no error code: no hint
  Result other = Run({"inspect", "--model", "m", "--input-shape", "1,1,28,28", "--watch"});
  EXPECT_EQ(other.code, kExitFailure);
  EXPECT_THAT(other.err, Not(HasSubstr("hint:")));
}

TEST_F(CliTest, JobSubmitWithBadJsonIsAnError) {
  const fs::path spec = dir_ / "spec.json";
  std::ofstream(spec) << R"({"inspect": {"no_such_field": 1}})";
  Result r = Run({"job", "submit", "--spec-json", spec.string()});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err,
              HasSubstr("error: INVALID_ARGUMENT: bad JobSpec JSON in "));
  EXPECT_TRUE(server_.jobs().submitted().empty());
}

TEST_F(CliTest, JobListFiltersAndCancel) {
  ScriptJob(v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(Run({"inspect", "--model", "m", "--data", "d"}).code, kExitOk);
  Result list =
      Run({"job", "list", "--state", "succeeded", "--kind", "inspect"});
  ASSERT_EQ(list.code, kExitOk) << list.err;
  // The MODEL column: the spec's model id ("m", unknown to the fake's
  // model list, so shown as the id itself).
  EXPECT_THAT(list.out, HasSubstr("INSPECT  m      SUCCEEDED"));
  Result empty = Run({"job", "list", "--state", "failed"});
  EXPECT_EQ(empty.out, "ID  KIND  MODEL  STATE  PROGRESS  DEVICE  CREATED\n");

  const std::string id = Sha256Hex("job1");  // the fake's first job id
  Result cancel = Run({"job", "cancel", id.substr(0, 12)});
  ASSERT_EQ(cancel.code, kExitOk) << cancel.err;
  EXPECT_THAT(cancel.out, HasSubstr("state:   CANCELLED\n"));
}

// --json job list: one Job per line, each as `job get --json` prints it,
// so scripts read it line by line like job watch's events (issue 19).
TEST_F(CliTest, JobListJsonPrintsOneJobPerLine) {
  ScriptJob(v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(Run({"inspect", "--model", "m1", "--data", "d"}).code, kExitOk);
  ScriptJob(v1::JOB_STATE_FAILED);
  ASSERT_EQ(Run({"inspect", "--model", "m2", "--data", "d"}).code, kExitOk);

  Result list = Run({"--json", "job", "list"});
  ASSERT_EQ(list.code, kExitOk) << list.err;
  ASSERT_FALSE(list.out.empty());
  EXPECT_EQ(list.out.back(), '\n');
  std::vector<std::string> lines = absl::StrSplit(list.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << list.out;
  std::set<std::string> models;
  for (const std::string& line : lines) {
    v1::Job job;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(line, &job).ok()) << line;
    EXPECT_EQ(job.kind(), v1::JOB_KIND_INSPECT);
    models.insert(job.spec().inspect().model_id());
    Result get = Run({"--json", "job", "get", job.id()});
    ASSERT_EQ(get.code, kExitOk) << get.err;
    EXPECT_EQ(get.out, line + "\n");
  }
  EXPECT_EQ(models, (std::set<std::string>{"m1", "m2"}));

  Result failed = Run({"--json", "job", "list", "--state", "failed"});
  ASSERT_EQ(failed.code, kExitOk) << failed.err;
  EXPECT_EQ(std::count(failed.out.begin(), failed.out.end(), '\n'), 1) << failed.out;
  EXPECT_EQ(Run({"--json", "job", "list", "--kind", "prune"}).out, "");
}

TEST_F(CliTest, ArtifactGetDownloadsAllIntoDirectory) {
  v1::Job job;
  job.set_id("J");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  server_.jobs().AddJob(job, {});
  server_.artifacts().AddArtifact("J", "report.json", "{\"ok\":true}");
  server_.artifacts().AddArtifact("J", "plots/trace.svg", "<svg/>");

  Result list = Run({"artifact", "list", "J"});
  ASSERT_EQ(list.code, kExitOk) << list.err;
  EXPECT_THAT(list.out, HasSubstr("report.json"));

  const fs::path out = dir_ / "out";
  Result get = Run({"artifact", "get", "J", "-o", out.string()});
  ASSERT_EQ(get.code, kExitOk) << get.err;
  EXPECT_THAT(get.out,
              HasSubstr("wrote " + (out / "report.json").string() + " (11 B)"));
  std::ifstream report(out / "report.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(report), {}),
            "{\"ok\":true}");
  EXPECT_TRUE(fs::exists(out / "plots" / "trace.svg"));

  Result one = Run({"artifact", "get", "J", "report.json", "--output",
                    (dir_ / "one").string()});
  ASSERT_EQ(one.code, kExitOk) << one.err;
  EXPECT_TRUE(fs::exists(dir_ / "one" / "report.json"));
  EXPECT_FALSE(fs::exists(dir_ / "one" / "plots"));
}

TEST_F(CliTest, ArtifactNamesCannotEscapeTheOutputDirectory) {
  v1::Job job;
  job.set_id("J");
  server_.jobs().AddJob(job, {});
  server_.artifacts().AddArtifact("J", "../evil", "x");
  Result r = Run({"artifact", "get", "J", "-o", (dir_ / "out").string()});
  EXPECT_EQ(r.code, kExitFailure);
  EXPECT_THAT(r.err, HasSubstr("refusing artifact name '../evil'"));
  EXPECT_FALSE(fs::exists(dir_ / "evil"));
}

}  // namespace
}  // namespace compress::client
