#include "client/cli.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <system_error>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/format.h"
#include "server/util/client_text.h"
#include "server/util/defaults.h"
#include "server/util/status_macros.h"

namespace compress::client {
namespace {

namespace fs = std::filesystem;

constexpr char kDefaultServer[] = "localhost:50051";
// Marks statuses that are the user's command-line mistake (exit code 2).
constexpr char kUsagePayload[] = "compressctl/usage";

absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

// Flags that follow job submission (inspect, job submit).
const std::vector<std::string>& JobFlags() {
  static const auto* flags =
      new std::vector<std::string>{"device", "seed", "request-id", "deadline", "watch"};
  return *flags;
}

std::vector<std::string> WithJobFlags(std::vector<std::string> flags) {
  flags.insert(flags.end(), JobFlags().begin(), JobFlags().end());
  return flags;
}

const std::vector<std::string>& GlobalFlagNames() {
  static const auto* names =
      new std::vector<std::string>{"server", "json", "timeout", "token", "tls", "ca",
                                   "cert", "key", "tls-server-name", "help"};
  return *names;
}

// Everything one command handler needs.
struct Context {
  const Invocation& inv;
  const CliEnvironment& env;
  const Client& client;
  bool json;

  std::ostream& out() const { return *env.out; }
  const std::string& arg(size_t i) const { return inv.args[i]; }
};

using Handler = std::function<absl::StatusOr<int>(const Context&)>;

// --- Id prefixes -------------------------------------------------------------
// Tables show ids cut to 12 characters; a NOT_FOUND for such a prefix is
// retried with the unique full id that starts with it.

template <typename T>
absl::StatusOr<std::string> ExpandPrefix(
    const std::string& prefix, const absl::Status& not_found,
    const std::function<absl::StatusOr<std::vector<T>>()>& list) {
  if (prefix.size() < 4 || prefix.size() >= 64) return not_found;
  absl::StatusOr<std::vector<T>> items = list();
  if (!items.ok()) return not_found;
  std::vector<std::string> matches;
  for (const T& item : *items) {
    if (absl::StartsWith(item.id(), prefix)) matches.push_back(item.id());
  }
  if (matches.empty()) return not_found;
  if (matches.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("id prefix '", prefix, "' is ambiguous: ", absl::StrJoin(matches, ", ")));
  }
  return matches[0];
}

// Runs op(id); on NOT_FOUND, op(full id) when `id` is a unique prefix.
template <typename T, typename Result>
Result WithIdPrefix(const std::string& id, const std::function<Result(const std::string&)>& op,
                    const std::function<absl::StatusOr<std::vector<T>>()>& list) {
  Result result = op(id);
  absl::Status status;
  if constexpr (std::is_same_v<Result, absl::Status>) {
    status = result;
  } else {
    status = result.status();
  }
  if (!absl::IsNotFound(status)) return result;
  absl::StatusOr<std::string> full = ExpandPrefix<T>(id, status, list);
  if (!full.ok()) return full.status();
  return op(*full);
}

std::function<absl::StatusOr<std::vector<v1::Model>>()> ModelLister(const Client& client) {
  return [&client] { return client.ListModels(); };
}
std::function<absl::StatusOr<std::vector<v1::Dataset>>()> DatasetLister(const Client& client) {
  return [&client] { return client.ListDatasets(); };
}
std::function<absl::StatusOr<std::vector<v1::Job>>()> JobLister(const Client& client) {
  return [&client] { return client.ListJobs(JobFilter()); };
}

absl::StatusOr<std::string> ResolveJobId(const Client& client, const std::string& id) {
  absl::StatusOr<v1::Job> job = WithIdPrefix<v1::Job, absl::StatusOr<v1::Job>>(
      id, [&client](const std::string& i) { return client.GetJob(i); }, JobLister(client));
  if (!job.ok()) return job.status();
  return job->id();
}

// For ids placed into a job spec: a short id that is the prefix of exactly
// one listed id becomes that id; anything else goes to the server unchanged
// (it answers for unknown ids). Full-length ids cost no extra call.
template <typename T>
std::string ExpandIfPrefix(const std::string& id,
                           const std::function<absl::StatusOr<std::vector<T>>()>& list) {
  if (id.size() < 4 || id.size() >= 64 || absl::StrContains(id, ':')) return id;
  absl::StatusOr<std::string> full = ExpandPrefix<T>(id, absl::NotFoundError(""), list);
  return full.ok() ? *full : id;
}

// --- Watch -------------------------------------------------------------------

absl::StatusOr<int> WatchAndReport(const Context& ctx, const std::string& job_id) {
  EventPrinter::Mode mode = ctx.json                ? EventPrinter::Mode::kJson
                            : ctx.env.stdout_is_tty ? EventPrinter::Mode::kTty
                                                    : EventPrinter::Mode::kPlain;
  EventPrinter printer(ctx.env.out, mode);
  absl::StatusOr<v1::JobState> state =
      ctx.client.WatchJob(job_id, 0, [&printer](const v1::JobEvent& e) { printer.Print(e); });
  printer.Finish();
  if (!state.ok()) return state.status();
  ASSIGN_OR_RETURN(const v1::Job job, ctx.client.GetJob(job_id));
  if (ctx.json) {
    ctx.out() << ToJson(job) << "\n";
  } else {
    ctx.out() << "\n" << FormatJob(job);
  }
  // The usual cause of an INSPECT whose input does not fit: a shape
  // without the batch dimension.
  const auto& shape = job.spec().inspect().input_shape();
  if (job.state() == v1::JOB_STATE_FAILED &&
      job.error().code() == static_cast<int>(absl::StatusCode::kInvalidArgument) &&
      !shape.empty()) {
    *ctx.env.err << "hint: --input-shape includes the batch dimension first (e.g. 1,1,28,28 "
                    "for one 28x28 grayscale image); this job's was "
                 << absl::StrJoin(shape, ",") << "\n";
  }
  return *state == v1::JOB_STATE_SUCCEEDED ? kExitOk : kExitFailure;
}

// Fills the fields shared by every submission and submits; watches when
// asked to.
absl::StatusOr<int> SubmitAndMaybeWatch(const Context& ctx, v1::SubmitJobRequest request) {
  request.set_device(ctx.inv.Get("device", "auto"));
  if (ctx.inv.Has("seed")) {
    absl::StatusOr<uint64_t> seed = ParseUint64(ctx.inv.Get("seed"));
    if (!seed.ok()) return UsageError(absl::StrCat("--seed: ", seed.status().message()));
    request.set_seed(*seed);
  }
  if (ctx.inv.Has("deadline")) {
    absl::StatusOr<int64_t> deadline = ParseNonNegativeInt(ctx.inv.Get("deadline"));
    if (!deadline.ok()) {
      return UsageError(absl::StrCat("--deadline: ", deadline.status().message()));
    }
    request.set_deadline_seconds(*deadline);
  }
  request.set_request_id(ctx.inv.Get("request-id"));
  ASSIGN_OR_RETURN(const v1::Job job, ctx.client.SubmitJob(request));
  if (ctx.json) {
    ctx.out() << ToJson(job) << "\n";
  } else if (ctx.inv.Has("watch")) {
    ctx.out() << "job " << EscapeControl(job.id()) << " " << StateName(job.state()) << "\n";
  } else {
    ctx.out() << FormatJob(job);
  }
  if (!ctx.inv.Has("watch")) return kExitOk;
  return WatchAndReport(ctx, job.id());
}

// --- Handlers ----------------------------------------------------------------

// Uploads are content-addressed: the same bytes again return the model or
// dataset already stored, under its first name. Says so (on stderr) when a
// --name was asked for and not given.
void NoteKeptName(const Context& ctx, const char* what, const std::string& id,
                  const std::string& kept) {
  if (!ctx.inv.Has("name") || ctx.inv.Get("name") == kept) return;
  *ctx.env.err << "note: these bytes were already uploaded as " << what << " " << id << " \""
               << EscapeControl(kept) << "\"; its name is unchanged (--name \""
               << EscapeControl(ctx.inv.Get("name")) << "\" not applied)\n";
}

absl::StatusOr<int> ModelUpload(const Context& ctx) {
  ASSIGN_OR_RETURN(const v1::Model model, ctx.client.UploadModel(ctx.arg(0), ctx.inv.Get("name")));
  NoteKeptName(ctx, "model", model.id(), model.name());
  ctx.out() << (ctx.json ? ToJson(model) + "\n" : FormatModel(model));
  return kExitOk;
}

absl::StatusOr<int> ModelGet(const Context& ctx) {
  ASSIGN_OR_RETURN(const v1::Model model,
                   (WithIdPrefix<v1::Model, absl::StatusOr<v1::Model>>(
                       ctx.arg(0), [&](const std::string& id) { return ctx.client.GetModel(id); },
                       ModelLister(ctx.client))));
  ctx.out() << (ctx.json ? ToJson(model) + "\n" : FormatModel(model));
  return kExitOk;
}

absl::StatusOr<int> ModelList(const Context& ctx) {
  ASSIGN_OR_RETURN(std::vector<v1::Model> models, ctx.client.ListModels());
  if (ctx.json) {
    v1::ListModelsResponse response;
    for (auto& m : models) *response.add_models() = std::move(m);
    ctx.out() << ToJson(response) << "\n";
  } else {
    ctx.out() << FormatModelTable(models);
  }
  return kExitOk;
}

absl::StatusOr<int> ModelDelete(const Context& ctx) {
  std::string deleted;
  RETURN_IF_ERROR((WithIdPrefix<v1::Model, absl::Status>(
      ctx.arg(0),
      [&](const std::string& id) {
        deleted = id;
        return ctx.client.DeleteModel(id);
      },
      ModelLister(ctx.client))));
  ctx.out() << (ctx.json ? ToJson(v1::DeleteModelResponse()) + "\n"
                         : absl::StrCat("deleted model ", deleted, "\n"));
  return kExitOk;
}

absl::StatusOr<int> DataUpload(const Context& ctx) {
  ASSIGN_OR_RETURN(const v1::Dataset dataset,
                   ctx.client.UploadDataset(ctx.arg(0), ctx.inv.Get("name")));
  NoteKeptName(ctx, "dataset", dataset.id(), dataset.name());
  ctx.out() << (ctx.json ? ToJson(dataset) + "\n" : FormatDataset(dataset));
  return kExitOk;
}

absl::StatusOr<int> DataGet(const Context& ctx) {
  ASSIGN_OR_RETURN(const v1::Dataset dataset,
                   (WithIdPrefix<v1::Dataset, absl::StatusOr<v1::Dataset>>(
                       ctx.arg(0), [&](const std::string& id) { return ctx.client.GetDataset(id); },
                       DatasetLister(ctx.client))));
  ctx.out() << (ctx.json ? ToJson(dataset) + "\n" : FormatDataset(dataset));
  return kExitOk;
}

absl::StatusOr<int> DataList(const Context& ctx) {
  ASSIGN_OR_RETURN(std::vector<v1::Dataset> datasets, ctx.client.ListDatasets());
  if (ctx.json) {
    v1::ListDatasetsResponse response;
    for (auto& d : datasets) *response.add_datasets() = std::move(d);
    ctx.out() << ToJson(response) << "\n";
  } else {
    ctx.out() << FormatDatasetTable(datasets);
  }
  return kExitOk;
}

absl::StatusOr<int> DataDelete(const Context& ctx) {
  std::string deleted;
  RETURN_IF_ERROR((WithIdPrefix<v1::Dataset, absl::Status>(
      ctx.arg(0),
      [&](const std::string& id) {
        deleted = id;
        return ctx.client.DeleteDataset(id);
      },
      DatasetLister(ctx.client))));
  ctx.out() << (ctx.json ? ToJson(v1::DeleteDatasetResponse()) + "\n"
                         : absl::StrCat("deleted dataset ", deleted, "\n"));
  return kExitOk;
}

// --loss and --lm-ignore-id of ANALYZE and QUANTIZE.
template <typename Spec>
absl::Status FillLoss(const Context& ctx, Spec* spec) {
  if (ctx.inv.Has("loss")) {
    const std::string l = ctx.inv.Get("loss");
    if (l == "auto") {
      spec->set_loss(v1::LOSS_KIND_UNSPECIFIED);
    } else if (l == "cross_entropy") {
      spec->set_loss(v1::LOSS_KIND_CROSS_ENTROPY);
    } else if (l == "pseudo_label") {
      spec->set_loss(v1::LOSS_KIND_PSEUDO_LABEL);
    } else if (l == "mse") {
      spec->set_loss(v1::LOSS_KIND_MSE);
    } else if (l == "language_modeling" || l == "lm") {
      spec->set_loss(v1::LOSS_KIND_LANGUAGE_MODELING);
    } else {
      return UsageError("--loss: auto, cross_entropy, pseudo_label, mse or language_modeling");
    }
  }
  if (ctx.inv.Has("lm-ignore-id")) {
    absl::StatusOr<int64_t> v = ParseNonNegativeInt(ctx.inv.Get("lm-ignore-id"));
    if (!v.ok()) return UsageError(absl::StrCat("--lm-ignore-id: ", v.status().message()));
    spec->set_lm_ignore_id(*v);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Inspect(const Context& ctx) {
  if (!ctx.inv.Has("model")) return UsageError("inspect needs --model ID");
  const bool has_shape = ctx.inv.Has("input-shape");
  const bool has_data = ctx.inv.Has("data");
  if (has_shape == has_data) {
    return UsageError("inspect needs exactly one of --input-shape or --data");
  }
  v1::SubmitJobRequest request;
  v1::InspectSpec* spec = request.mutable_spec()->mutable_inspect();
  spec->set_model_id(ExpandIfPrefix<v1::Model>(ctx.inv.Get("model"), ModelLister(ctx.client)));
  if (has_shape) {
    absl::StatusOr<std::vector<int64_t>> shape = ParseShape(ctx.inv.Get("input-shape"));
    if (!shape.ok()) {
      return UsageError(absl::StrCat("--input-shape: ", shape.status().message()));
    }
    spec->mutable_input_shape()->Add(shape->begin(), shape->end());
  } else {
    spec->set_dataset_id(
        ExpandIfPrefix<v1::Dataset>(ctx.inv.Get("data"), DatasetLister(ctx.client)));
  }
  if (ctx.inv.Has("input-dtype")) spec->set_input_dtype(ctx.inv.Get("input-dtype"));
  return SubmitAndMaybeWatch(ctx, std::move(request));
}

absl::StatusOr<int> Analyze(const Context& ctx) {
  if (!ctx.inv.Has("model") || !ctx.inv.Has("data")) {
    return UsageError("analyze needs --model ID and --data DATASET_ID");
  }
  v1::SubmitJobRequest request;
  v1::AnalyzeSpec* spec = request.mutable_spec()->mutable_analyze();
  spec->set_model_id(ExpandIfPrefix<v1::Model>(ctx.inv.Get("model"), ModelLister(ctx.client)));
  spec->mutable_data()->set_dataset_id(
      ExpandIfPrefix<v1::Dataset>(ctx.inv.Get("data"), DatasetLister(ctx.client)));
  auto number = [&](const char* flag) -> absl::StatusOr<int64_t> {
    absl::StatusOr<int64_t> v = ParseNonNegativeInt(ctx.inv.Get(flag));
    if (!v.ok()) return UsageError(absl::StrCat("--", flag, ": ", v.status().message()));
    return v;
  };
  RETURN_IF_ERROR(FillLoss(ctx, spec));
  if (ctx.inv.Has("samples")) {
    ASSIGN_OR_RETURN(int64_t v, number("samples"));
    spec->mutable_data()->set_num_samples(v);
  }
  if (ctx.inv.Has("batch")) {
    ASSIGN_OR_RETURN(int64_t v, number("batch"));
    spec->mutable_data()->set_batch_size(v);
  }
  if (ctx.inv.Has("method")) {
    const std::string m = ctx.inv.Get("method");
    if (m == "exact") {
      spec->set_hvp_method(v1::HVP_METHOD_EXACT);
    } else if (m == "fd") {
      spec->set_hvp_method(v1::HVP_METHOD_FINITE_DIFFERENCE);
    } else if (m == "ggn") {
      spec->set_hvp_method(v1::HVP_METHOD_GAUSS_NEWTON);
    } else if (m == "fisher") {
      spec->set_hvp_method(v1::HVP_METHOD_FISHER_DIAGONAL);
    } else {
      return UsageError("--method: exact, fd, ggn or fisher");
    }
  }
  if (ctx.inv.Has("fallback")) {
    const std::string f = ctx.inv.Get("fallback");
    if (f == "fd") {
      spec->set_fallback(v1::HVP_FALLBACK_FINITE_DIFFERENCE);
    } else if (f == "fisher") {
      spec->set_fallback(v1::HVP_FALLBACK_FISHER);
    } else if (f == "none") {
      spec->set_fallback(v1::HVP_FALLBACK_NONE);
    } else {
      return UsageError("--fallback: fd, fisher or none");
    }
  }
  spec->mutable_traces()->set_enabled(true);
  if (ctx.inv.Has("probes")) {
    ASSIGN_OR_RETURN(int64_t v, number("probes"));
    spec->mutable_traces()->set_max_probes(static_cast<int32_t>(v));
  }
  if (ctx.inv.Has("eigen")) {
    ASSIGN_OR_RETURN(int64_t v, number("eigen"));
    spec->mutable_eigen()->set_enabled(true);
    spec->mutable_eigen()->set_k(static_cast<int32_t>(v));
  }
  if (ctx.inv.Has("eigen-method")) {
    if (!ctx.inv.Has("eigen")) return UsageError("--eigen-method needs --eigen K");
    const std::string method = ctx.inv.Get("eigen-method");
    if (method == "power") {
      spec->mutable_eigen()->set_method(v1::EIGEN_METHOD_POWER);
    } else if (method == "lanczos") {
      spec->mutable_eigen()->set_method(v1::EIGEN_METHOD_LANCZOS);
    } else {
      return UsageError("--eigen-method: power or lanczos");
    }
  }
  if (ctx.inv.Has("scope")) {
    const std::string scope = ctx.inv.Get("scope");
    if (!ctx.inv.Has("eigen")) return UsageError("--scope needs --eigen K");
    if (scope == "model") {
      spec->mutable_eigen()->set_scope(v1::EIGEN_SCOPE_MODEL);
    } else if (scope == "layer") {
      spec->mutable_eigen()->set_scope(v1::EIGEN_SCOPE_LAYER);
    } else if (scope == "block") {
      spec->mutable_eigen()->set_scope(v1::EIGEN_SCOPE_BLOCK);
    } else {
      return UsageError("--scope: model, layer or block");
    }
  }
  if (ctx.inv.Has("density")) spec->mutable_density()->set_enabled(true);
  if (ctx.inv.Has("qbert")) {
    ASSIGN_OR_RETURN(int64_t v, number("qbert"));
    spec->mutable_qbert()->set_enabled(true);
    spec->mutable_qbert()->set_subsets(static_cast<int32_t>(v));
  }
  return SubmitAndMaybeWatch(ctx, std::move(request));
}

// Splits "a,b;c" at any of `separators`, trimming blanks and dropping empty
// pieces.
std::vector<std::string> SplitList(const std::string& text, const char* separators) {
  std::vector<std::string> out;
  for (absl::string_view piece : absl::StrSplit(text, absl::ByAnyChar(separators))) {
    piece = absl::StripAsciiWhitespace(piece);
    if (!piece.empty()) out.emplace_back(piece);
  }
  return out;
}

absl::StatusOr<double> NonNegativeNumber(const Context& ctx, const char* flag) {
  double v = 0;
  if (!absl::SimpleAtod(ctx.inv.Get(flag), &v) || !std::isfinite(v) || v < 0) {
    return UsageError(absl::StrCat("--", flag, ": expected a non-negative number, got '",
                                   ctx.inv.Get(flag), "'"));
  }
  return v;
}

// --model, --data, --eval, --samples, --batch and --eval-samples, shared by
// quantize, prune and compress.
struct CommonJobFlags {
  std::string model_id;
  v1::CalibrationData data;
  std::string eval_dataset_id;
  std::optional<int64_t> eval_samples;
};

absl::StatusOr<int64_t> IntegerFlag(const Context& ctx, const char* flag) {
  absl::StatusOr<int64_t> v = ParseNonNegativeInt(ctx.inv.Get(flag));
  if (!v.ok()) return UsageError(absl::StrCat("--", flag, ": ", v.status().message()));
  return v;
}

absl::StatusOr<CommonJobFlags> ParseCommonJobFlags(const Context& ctx, const char* command) {
  if (!ctx.inv.Has("model") || !ctx.inv.Has("data")) {
    return UsageError(absl::StrCat(command, " needs --model ID and --data DATASET_ID"));
  }
  CommonJobFlags f;
  f.model_id = ExpandIfPrefix<v1::Model>(ctx.inv.Get("model"), ModelLister(ctx.client));
  f.data.set_dataset_id(
      ExpandIfPrefix<v1::Dataset>(ctx.inv.Get("data"), DatasetLister(ctx.client)));
  if (ctx.inv.Has("eval")) {
    f.eval_dataset_id = ExpandIfPrefix<v1::Dataset>(ctx.inv.Get("eval"), DatasetLister(ctx.client));
  }
  if (ctx.inv.Has("samples")) {
    ASSIGN_OR_RETURN(int64_t v, IntegerFlag(ctx, "samples"));
    f.data.set_num_samples(v);
  }
  if (ctx.inv.Has("batch")) {
    ASSIGN_OR_RETURN(int64_t v, IntegerFlag(ctx, "batch"));
    f.data.set_batch_size(v);
  }
  if (ctx.inv.Has("eval-samples")) {
    ASSIGN_OR_RETURN(int64_t v, IntegerFlag(ctx, "eval-samples"));
    f.eval_samples = v;
  }
  return f;
}

// The quantize flags (budget, search, quantizer, pins, ties, sensitivity).
absl::Status FillQuantizeSpec(const Context& ctx, v1::QuantizeSpec* spec) {
  auto integer = [&](const char* flag) { return IntegerFlag(ctx, flag); };
  // --avg-bits is DESIGN.md's name for --bits.
  const char* bits_flag = ctx.inv.Has("avg-bits") ? "avg-bits" : "bits";
  if (ctx.inv.Has("bits") + ctx.inv.Has("avg-bits") + ctx.inv.Has("bytes") +
          ctx.inv.Has("bops") >
      1) {
    return UsageError("at most one of --bits, --bytes and --bops");
  }
  if (ctx.inv.Has(bits_flag)) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, bits_flag));
    spec->mutable_budget()->set_average_bits(v);
  } else if (ctx.inv.Has("bytes")) {
    ASSIGN_OR_RETURN(int64_t v, integer("bytes"));
    spec->mutable_budget()->set_model_bytes(v);
  } else if (ctx.inv.Has("bops")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "bops"));
    spec->mutable_budget()->set_bops(v);
  }
  if (ctx.inv.Has("max-drop") && ctx.inv.Has("max-relative-drop")) {
    return UsageError("at most one of --max-drop and --max-relative-drop");
  }
  if (ctx.inv.Has("max-drop")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "max-drop"));
    spec->mutable_tolerance()->set_max_drop_pp(v);
  } else if (ctx.inv.Has("max-relative-drop")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "max-relative-drop"));
    spec->mutable_tolerance()->set_max_relative_drop(v);
  }
  if (ctx.inv.Has("search")) {
    const std::string m = ctx.inv.Get("search");
    if (m == "exact") {
      spec->set_search(v1::SEARCH_METHOD_EXACT);
    } else if (m == "pareto") {
      spec->set_search(v1::SEARCH_METHOD_PARETO);
    } else if (m == "bisection") {
      spec->set_search(v1::SEARCH_METHOD_ACCURACY_BISECTION);
    } else if (m == "uniform") {
      spec->set_search(v1::SEARCH_METHOD_UNIFORM);
    } else {
      return UsageError("--search: exact, pareto, bisection or uniform");
    }
  }
  v1::QuantizerSettings* q = spec->mutable_quantizer();
  if (ctx.inv.Has("gptq")) q->set_rounding(v1::ROUNDING_GPTQ);
  if (ctx.inv.Has("int8")) spec->set_int8_model(true);
  if (ctx.inv.Has("asymmetric")) q->set_asymmetric(true);
  if (ctx.inv.Has("granularity")) {
    const std::string g = ctx.inv.Get("granularity");
    if (g == "tensor") {
      q->set_granularity(v1::GRANULARITY_PER_TENSOR);
    } else if (g == "channel") {
      q->set_granularity(v1::GRANULARITY_PER_CHANNEL);
    } else if (g == "group") {
      q->set_granularity(v1::GRANULARITY_GROUP);
    } else {
      return UsageError("--granularity: tensor, channel or group");
    }
  }
  if (ctx.inv.Has("group-size")) {
    ASSIGN_OR_RETURN(int64_t v, integer("group-size"));
    q->set_group_size(static_cast<int32_t>(v));
  }
  if (ctx.inv.Has("candidates")) {
    for (const std::string& c : SplitList(ctx.inv.Get("candidates"), ",")) {
      int bits = 0;
      if (!absl::SimpleAtoi(c, &bits)) {
        return UsageError(absl::StrCat("--candidates: '", c, "' is not a number of bits"));
      }
      spec->add_candidate_bits(bits);
    }
  }
  if (ctx.inv.Has("pin")) {
    const std::string pins = ctx.inv.Get("pin");
    if (pins == "none") {
      spec->set_no_default_pins(true);
    } else {
      for (const std::string& pin : SplitList(pins, ",;")) {
        const size_t eq = pin.rfind('=');
        int bits = 0;
        if (eq == std::string::npos || eq == 0 || !absl::SimpleAtoi(pin.substr(eq + 1), &bits)) {
          return UsageError(absl::StrCat("--pin: expected LAYER=BITS, got '", pin, "'"));
        }
        v1::LayerPin* p = spec->add_pins();
        p->set_layer(pin.substr(0, eq));
        p->set_bits(bits);
      }
    }
  }
  if (ctx.inv.Has("tie")) {
    for (const std::string& tie : SplitList(ctx.inv.Get("tie"), ";")) {
      v1::LayerTie* t = spec->add_ties();
      for (const std::string& layer : SplitList(tie, ",")) t->add_layers(layer);
    }
  }
  if (ctx.inv.Has("omega")) {
    const std::string omega = ctx.inv.Get("omega");
    if (omega == "trace") {
      spec->set_omega(v1::OMEGA_TRACE);
    } else if (omega == "quadratic") {
      spec->set_omega(v1::OMEGA_QUADRATIC);
    } else {
      return UsageError("--omega: trace or quadratic");
    }
  }
  if (ctx.inv.Has("sensitivity")) {
    spec->set_sensitivity_job_id(
        ExpandIfPrefix<v1::Job>(ctx.inv.Get("sensitivity"), JobLister(ctx.client)));
  }
  if (ctx.inv.Has("allow-unconverged")) {
    if (!spec->sensitivity_job_id().empty()) {
      spec->set_allow_unconverged_traces(true);
    } else {
      return UsageError("--allow-unconverged: only with --sensitivity");
    }
  }
  return absl::OkStatus();
}

// --head-refit N [--head-hessian auto|exact|kfac] [--head-alpha A].
absl::Status FillHeadRefit(const Context& ctx, v1::QuantizeSpec* spec) {
  if (!ctx.inv.Has("head-refit")) {
    if (ctx.inv.Has("head-hessian") || ctx.inv.Has("head-alpha")) {
      return UsageError("--head-hessian and --head-alpha need --head-refit N");
    }
    return absl::OkStatus();
  }
  v1::HeadRefitOptions* h = spec->mutable_head_refit();
  ASSIGN_OR_RETURN(int64_t n, IntegerFlag(ctx, "head-refit"));
  h->set_iterations(static_cast<int32_t>(n));
  if (ctx.inv.Has("head-hessian")) {
    const std::string k = ctx.inv.Get("head-hessian");
    if (k == "exact") {
      h->set_hessian(v1::HEAD_REFIT_HESSIAN_EXACT);
    } else if (k == "kfac") {
      h->set_hessian(v1::HEAD_REFIT_HESSIAN_KFAC);
    } else if (k != "auto") {
      return UsageError("--head-hessian: auto, exact or kfac");
    }
  }
  if (ctx.inv.Has("head-alpha")) {
    ASSIGN_OR_RETURN(double a, NonNegativeNumber(ctx, "head-alpha"));
    h->set_alpha(a);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Quantize(const Context& ctx) {
  ASSIGN_OR_RETURN(CommonJobFlags common, ParseCommonJobFlags(ctx, "quantize"));
  v1::SubmitJobRequest request;
  v1::QuantizeSpec* spec = request.mutable_spec()->mutable_quantize();
  spec->set_model_id(common.model_id);
  *spec->mutable_data() = common.data;
  spec->set_eval_dataset_id(common.eval_dataset_id);
  if (common.eval_samples) spec->set_eval_samples(*common.eval_samples);
  RETURN_IF_ERROR(FillQuantizeSpec(ctx, spec));
  RETURN_IF_ERROR(FillLoss(ctx, spec));
  RETURN_IF_ERROR(FillHeadRefit(ctx, spec));
  return SubmitAndMaybeWatch(ctx, std::move(request));
}

// The prune flags (target, saliency, groups, rounds, recovery).
absl::Status FillPruneSpec(const Context& ctx, const CommonJobFlags& common, v1::PruneSpec* spec) {
  spec->set_model_id(common.model_id);
  *spec->mutable_data() = common.data;
  spec->set_eval_dataset_id(common.eval_dataset_id);
  if (common.eval_samples) spec->set_eval_samples(*common.eval_samples);
  const int targets = ctx.inv.Has("flops") + ctx.inv.Has("params") + ctx.inv.Has("latency");
  if (targets > 1) return UsageError("at most one of --flops, --params and --latency");
  if (ctx.inv.Has("params")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "params"));
    spec->mutable_target()->set_params_fraction(v);
  } else if (ctx.inv.Has("latency")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "latency"));
    spec->mutable_target()->set_latency_fraction(v);
  } else if (ctx.inv.Has("flops")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "flops"));
    spec->mutable_target()->set_flops_fraction(v);
  } else {
    spec->mutable_target()->set_flops_fraction(0.5);
  }
  if (ctx.inv.Has("saliency")) {
    const std::string k = ctx.inv.Get("saliency");
    if (k == "hessian") {
      spec->set_saliency(v1::SALIENCY_HESSIAN);
    } else if (k == "taylor") {
      spec->set_saliency(v1::SALIENCY_TAYLOR);
    } else if (k == "magnitude") {
      spec->set_saliency(v1::SALIENCY_MAGNITUDE);
    } else {
      return UsageError("--saliency: hessian, taylor or magnitude");
    }
  }
  if (ctx.inv.Has("latency-weight")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "latency-weight"));
    spec->set_latency_weight(v);
  }
  auto int_flag = [&](const char* flag, auto setter) -> absl::Status {
    if (!ctx.inv.Has(flag)) return absl::OkStatus();
    ASSIGN_OR_RETURN(int64_t v, IntegerFlag(ctx, flag));
    setter(v);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(int_flag("head-group", [&](int64_t v) { spec->set_head_group(static_cast<int32_t>(v)); }));
  RETURN_IF_ERROR(int_flag("mlp-group", [&](int64_t v) { spec->set_mlp_group(static_cast<int32_t>(v)); }));
  RETURN_IF_ERROR(int_flag("rounds", [&](int64_t v) { spec->set_steps(static_cast<int32_t>(v)); }));
  RETURN_IF_ERROR(int_flag("saliency-samples", [&](int64_t v) { spec->set_saliency_samples(v); }));
  RETURN_IF_ERROR(int_flag("recovery-steps", [&](int64_t v) {
    spec->mutable_recovery()->set_steps(static_cast<int32_t>(v));
  }));
  if (ctx.inv.Has("lr")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "lr"));
    spec->mutable_recovery()->set_learning_rate(v);
  }
  if (ctx.inv.Has("temperature")) {
    ASSIGN_OR_RETURN(double v, NonNegativeNumber(ctx, "temperature"));
    spec->mutable_recovery()->set_temperature(v);
  }
  if (ctx.inv.Has("optimizer")) spec->mutable_recovery()->set_optimizer(ctx.inv.Get("optimizer"));
  return absl::OkStatus();
}

absl::StatusOr<int> Prune(const Context& ctx) {
  ASSIGN_OR_RETURN(CommonJobFlags common, ParseCommonJobFlags(ctx, "prune"));
  v1::SubmitJobRequest request;
  RETURN_IF_ERROR(FillPruneSpec(ctx, common, request.mutable_spec()->mutable_prune()));
  return SubmitAndMaybeWatch(ctx, std::move(request));
}

absl::StatusOr<int> Compress(const Context& ctx) {
  ASSIGN_OR_RETURN(CommonJobFlags common, ParseCommonJobFlags(ctx, "compress"));
  v1::SubmitJobRequest request;
  v1::CompressSpec* spec = request.mutable_spec()->mutable_compress();
  RETURN_IF_ERROR(FillPruneSpec(ctx, common, spec->mutable_prune()));
  v1::QuantizeSpec* q = spec->mutable_quantize();
  *q->mutable_data() = common.data;
  q->set_eval_dataset_id(common.eval_dataset_id);
  if (common.eval_samples) q->set_eval_samples(*common.eval_samples);
  RETURN_IF_ERROR(FillQuantizeSpec(ctx, q));
  return SubmitAndMaybeWatch(ctx, std::move(request));
}

absl::StatusOr<int> JobSubmit(const Context& ctx) {
  if (!ctx.inv.Has("spec-json")) return UsageError("job submit needs --spec-json FILE");
  const std::string source = ctx.inv.Get("spec-json");
  std::string json;
  if (source == "-") {
    std::ostringstream buffer;
    buffer << ctx.env.in->rdbuf();
    json = buffer.str();
  } else {
    std::ifstream file(source, std::ios::binary);
    if (!file) return absl::NotFoundError(absl::StrCat("cannot open ", source));
    std::ostringstream buffer;
    buffer << file.rdbuf();
    json = buffer.str();
  }
  v1::SubmitJobRequest request;
  const auto parsed = google::protobuf::util::JsonStringToMessage(json, request.mutable_spec());
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("bad JobSpec JSON in ",
                                                   source == "-" ? "stdin" : source, ": ",
                                                   parsed.message().as_string()));
  }
  return SubmitAndMaybeWatch(ctx, std::move(request));
}

absl::StatusOr<int> JobGet(const Context& ctx) {
  ASSIGN_OR_RETURN(const v1::Job job,
                   (WithIdPrefix<v1::Job, absl::StatusOr<v1::Job>>(
                       ctx.arg(0), [&](const std::string& id) { return ctx.client.GetJob(id); },
                       JobLister(ctx.client))));
  ctx.out() << (ctx.json ? ToJson(job) + "\n" : FormatJob(job));
  return kExitOk;
}

absl::StatusOr<int> JobCancel(const Context& ctx) {
  ASSIGN_OR_RETURN(const std::string id, ResolveJobId(ctx.client, ctx.arg(0)));
  ASSIGN_OR_RETURN(const v1::Job job, ctx.client.CancelJob(id));
  ctx.out() << (ctx.json ? ToJson(job) + "\n" : FormatJob(job));
  return kExitOk;
}

absl::StatusOr<int> JobWatch(const Context& ctx) {
  ASSIGN_OR_RETURN(const std::string id, ResolveJobId(ctx.client, ctx.arg(0)));
  return WatchAndReport(ctx, id);
}

absl::StatusOr<int> JobList(const Context& ctx) {
  JobFilter filter;
  if (ctx.inv.Has("state")) {
    absl::StatusOr<v1::JobState> state = ParseJobState(ctx.inv.Get("state"));
    if (!state.ok()) return UsageError(absl::StrCat("--state: ", state.status().message()));
    filter.state = *state;
  }
  if (ctx.inv.Has("kind")) {
    absl::StatusOr<v1::JobKind> kind = ParseJobKind(ctx.inv.Get("kind"));
    if (!kind.ok()) return UsageError(absl::StrCat("--kind: ", kind.status().message()));
    filter.kind = *kind;
  }
  ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, ctx.client.ListJobs(filter));
  if (ctx.json) {
    // One Job per line, as `job get --json` prints it: a script can read
    // the list line by line (no jobs: no lines).
    for (const v1::Job& j : jobs) ctx.out() << ToJson(j) << "\n";
  } else {
    // Model names for the MODEL column; without them it shows short ids.
    std::map<std::string, std::string> names;
    if (auto models = ctx.client.ListModels(); models.ok()) {
      for (const v1::Model& m : *models) names[m.id()] = m.name();
    }
    ctx.out() << FormatJobTable(jobs, &names);
  }
  return kExitOk;
}

absl::StatusOr<int> ArtifactList(const Context& ctx) {
  ASSIGN_OR_RETURN(const std::string id, ResolveJobId(ctx.client, ctx.arg(0)));
  ASSIGN_OR_RETURN(std::vector<v1::Artifact> artifacts, ctx.client.ListArtifacts(id));
  if (ctx.json) {
    v1::ListArtifactsResponse response;
    for (auto& a : artifacts) *response.add_artifacts() = std::move(a);
    ctx.out() << ToJson(response) << "\n";
  } else {
    ctx.out() << FormatArtifactTable(artifacts);
  }
  return kExitOk;
}

// Artifact names come from the server: they may name subdirectories
// ("plots/trace.svg") but must stay inside the output directory.
absl::StatusOr<fs::path> ArtifactPath(const fs::path& dir, const std::string& name) {
  const fs::path relative(name);
  bool safe = !name.empty() && relative.is_relative() && !relative.has_root_name();
  for (const fs::path& part : relative) safe &= part != ".." && part != ".";
  if (!safe) {
    return absl::InvalidArgumentError(
        absl::StrCat("refusing artifact name '", name, "' (not a plain relative path)"));
  }
  return dir / relative;
}

absl::StatusOr<int> ArtifactGet(const Context& ctx) {
  ASSIGN_OR_RETURN(const std::string job_id, ResolveJobId(ctx.client, ctx.arg(0)));
  const fs::path dir(ctx.inv.Get("output", "."));
  std::vector<std::string> names;
  if (ctx.inv.args.size() > 1) {
    names.push_back(ctx.arg(1));
  } else {
    ASSIGN_OR_RETURN(const std::vector<v1::Artifact> artifacts, ctx.client.ListArtifacts(job_id));
    for (const v1::Artifact& a : artifacts) names.push_back(a.name());
    if (names.empty() && !ctx.json) {
      ctx.out() << "job " << EscapeControl(job_id) << " has no artifacts\n";
    }
  }
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(const fs::path path, ArtifactPath(dir, name));
    std::error_code ec;
    fs::create_directories(path.parent_path().empty() ? fs::path(".") : path.parent_path(), ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("cannot create directory ",
                                              path.parent_path().string(), ": ", ec.message()));
    }
    ASSIGN_OR_RETURN(const v1::Artifact artifact,
                     ctx.client.DownloadArtifact(job_id, name, path.string()));
    if (ctx.json) {
      ctx.out() << ToJson(artifact) << "\n";
    } else {
      ctx.out() << "wrote " << EscapeControl(path.string()) << " ("
                << HumanBytes(artifact.size_bytes()) << ")\n";
    }
  }
  return kExitOk;
}

// --- Tables ------------------------------------------------------------------

struct Entry {
  CommandDef def;
  Handler handler;
};

// Probe mode for container HEALTHCHECKs and scripts: exit 0 only when the
// server (or the named service) answers SERVING.
absl::StatusOr<int> Health(const Context& ctx) {
  const std::string service = ctx.inv.args.empty() ? "" : ctx.arg(0);
  ASSIGN_OR_RETURN(std::string status, ctx.client.CheckHealth(service));
  if (ctx.json) {
    ctx.out() << "{\"status\":\"" << status << "\"}\n";
  } else {
    ctx.out() << status << "\n";
  }
  return status == "SERVING" ? kExitOk : kExitFailure;
}

const std::vector<Entry>& Entries() {
  static const auto* entries = new std::vector<Entry>{
      {{{"health"},
        "[SERVICE]",
        "",
        0,
        1,
        {},
        "grpc.health.v1 check; exit 0 only when SERVING (no token needed)"},
       Health},
      {{{"model", "upload"},
        "FILE",
        "[--name N]",
        1,
        1,
        {"name"},
        "upload a TorchScript model; prints its id"},
       ModelUpload},
      {{{"model", "get"}, "ID", "", 1, 1, {}, "show a model and its layers"}, ModelGet},
      {{{"model", "list"}, "", "", 0, 0, {}, "list models"}, ModelList},
      {{{"model", "delete"}, "ID", "", 1, 1, {}, "delete a model"}, ModelDelete},
      {{{"data", "upload"},
        "FILE",
        "[--name N]",
        1,
        1,
        {"name"},
        "upload a dataset (safetensors, torch.save)"},
       DataUpload},
      {{{"data", "get"}, "ID", "", 1, 1, {}, "show a dataset"}, DataGet},
      {{{"data", "list"}, "", "", 0, 0, {}, "list datasets"}, DataList},
      {{{"data", "delete"}, "ID", "", 1, 1, {}, "delete a dataset"}, DataDelete},
      {{{"inspect"},
        "",
        "--model ID (--input-shape 1,1,28,28 | --data DATASET_ID) [--input-dtype D] [job flags]",
        0,
        0,
        WithJobFlags({"model", "input-shape", "data", "input-dtype"}),
        "submit an INSPECT job (layers, parameters, MACs)"},
       Inspect},
      {{{"analyze"},
        "",
        "--model ID --data DATASET_ID [--samples N] [--batch N] [--method exact|fd|ggn] "
        "[--fallback F] [--probes N] [--eigen K [--scope S] [--eigen-method M]] [--density] "
        "[--qbert SUBSETS] [--loss L [--lm-ignore-id ID]] [job flags]",
        0,
        0,
        WithJobFlags({"model", "data", "samples", "batch", "method", "fallback", "probes", "eigen",
                      "scope", "eigen-method", "density", "qbert", "loss", "lm-ignore-id"}),
        "submit an ANALYZE job (per-layer Hessian sensitivity)"},
       Analyze},
      {{{"quantize"},
        "",
        absl::StrCat("--model ID --data DATASET_ID [--eval DATASET_ID] [--eval-samples N] "
                     "[--bits AVG | --bytes N | --bops N] "
                     "[--search exact|pareto|bisection|uniform] "
                     "[--max-drop PP | --max-relative-drop F] [--gptq] [--asymmetric] "
                     "[--granularity tensor|channel|group] [--group-size ",
                     absl::StrJoin(defaults::kGroupSizes, "|"), "] [--candidates ",
                     absl::StrJoin(defaults::kCandidateBits, ","),
                     "] [--pin LAYER=BITS,...|none] [--tie A,B;C,D] [--omega trace|quadratic] "
                     "[--sensitivity ANALYZE_JOB_ID [--allow-unconverged]] [--samples N] "
                     "[--batch N] [--loss L [--lm-ignore-id ID]] [--int8] "
                     "[--head-refit N [--head-hessian auto|exact|kfac] [--head-alpha A]] "
                     "[job flags]"),
        0,
        0,
        WithJobFlags({"model", "data",       "eval",        "eval-samples", "bits", "avg-bits",
                      "bytes", "bops",       "search",      "max-drop",     "max-relative-drop",
                      "gptq",  "asymmetric", "granularity", "group-size",   "candidates",
                      "pin",   "tie",        "sensitivity", "samples",      "batch",
                      "omega", "allow-unconverged", "loss", "lm-ignore-id", "int8",
                      "head-refit", "head-hessian", "head-alpha"}),
        "submit a QUANTIZE job (mixed-precision bits from Hessian sensitivity)"},
       Quantize},
      {{{"prune"},
        "",
        "--model ID --data DATASET_ID [--eval DATASET_ID] [--eval-samples N] "
        "[--flops F | --params F | --latency F] [--saliency hessian|taylor|magnitude] "
        "[--latency-weight X] [--head-group N] [--mlp-group N] [--rounds N] "
        "[--recovery-steps N] [--lr X] [--temperature T] [--optimizer adam|sgd|newton] "
        "[--saliency-samples N] [--samples N] [--batch N] [job flags]",
        0,
        0,
        WithJobFlags({"model", "data", "eval", "eval-samples", "flops", "params", "latency",
                      "saliency", "latency-weight", "head-group", "mlp-group", "rounds",
                      "recovery-steps", "lr", "temperature", "optimizer", "saliency-samples",
                      "samples", "batch"}),
        "submit a PRUNE job (ViT heads and MLP neurons by Hessian-aware saliency)"},
       Prune},
      {{{"compress"},
        "",
        "prune flags and quantize flags (--sensitivity excepted) [job flags]",
        0,
        0,
        WithJobFlags({"model", "data", "eval", "eval-samples", "flops", "params", "latency",
                      "saliency", "latency-weight", "head-group", "mlp-group", "rounds",
                      "recovery-steps", "lr", "temperature", "optimizer", "saliency-samples",
                      "samples", "batch", "bits", "avg-bits", "bytes", "bops", "search",
                      "max-drop", "max-relative-drop", "gptq", "asymmetric", "granularity",
                      "group-size", "candidates", "pin", "tie", "int8"}),
        "submit a COMPRESS job (PRUNE, then QUANTIZE the pruned model)"},
       Compress},
      {{{"job", "submit"},
        "",
        "--spec-json FILE|- [job flags]",
        0,
        0,
        WithJobFlags({"spec-json"}),
        "submit a job from a JobSpec in JSON"},
       JobSubmit},
      {{{"job", "get"}, "ID", "", 1, 1, {}, "show a job (and its result)"}, JobGet},
      {{{"job", "cancel"}, "ID", "", 1, 1, {}, "cancel a job"}, JobCancel},
      {{{"job", "watch"}, "ID", "", 1, 1, {}, "follow a job until it ends (exit 0 iff SUCCEEDED)"},
       JobWatch},
      {{{"job", "list"}, "", "[--state S] [--kind K]", 0, 0, {"state", "kind"}, "list jobs"},
       JobList},
      {{{"artifact", "list"}, "JOB", "", 1, 1, {}, "list a job's artifacts"}, ArtifactList},
      {{{"artifact", "get"},
        "JOB [NAME]",
        "[-o DIR]",
        1,
        2,
        {"output"},
        "download one or all artifacts into DIR (default .)"},
       ArtifactGet},
      {{{"help"}, "", "", 0, 0, {}, "show this help"}, nullptr},
  };
  return *entries;
}

std::string Synopsis(const CommandDef& c) {
  std::string s = c.Name();
  if (!c.args_usage.empty()) absl::StrAppend(&s, " ", c.args_usage);
  if (!c.flags_usage.empty()) absl::StrAppend(&s, " ", c.flags_usage);
  return s;
}

std::string FlagSynopsis(const FlagDef& f) {
  std::string s = absl::StrCat("--", f.name);
  if (f.short_name != 0) s = absl::StrCat("-", std::string(1, f.short_name), ", ", s);
  if (f.takes_value) absl::StrAppend(&s, " ", f.value_name);
  return s;
}

}  // namespace

const std::vector<CommandDef>& Commands() {
  static const auto* commands = [] {
    auto* v = new std::vector<CommandDef>;
    for (const Entry& e : Entries()) v->push_back(e.def);
    return v;
  }();
  return *commands;
}

const std::vector<FlagDef>& Flags() {
  static const auto* flags = new std::vector<FlagDef>{
      // Global.
      {"server", 0, true, "ADDR", "host:port (env COMPRESS_SERVER; default localhost:50051)"},
      {"json", 0, false, "", "print responses as JSON, one message per line"},
      {"timeout", 0, true, "SECONDS", "deadline for each RPC (default none)"},
      {"token", 0, true, "TOKEN", "bearer token (env COMPRESS_TOKEN)"},
      {"tls", 0, false, "", "TLS with the system's CA roots (implied by the next four)"},
      {"ca", 0, true, "FILE", "TLS: PEM CA that signed the server certificate (env COMPRESS_CA)"},
      {"cert", 0, true, "FILE", "TLS: PEM client certificate (env COMPRESS_CERT)"},
      {"key", 0, true, "FILE", "TLS: PEM key of --cert (env COMPRESS_KEY)"},
      {"tls-server-name", 0, true, "NAME",
       "TLS: check the server certificate for NAME (env COMPRESS_TLS_SERVER_NAME)"},
      {"help", 'h', false, "", "show this help"},
      // Per command.
      {"name", 0, true, "N", "name to store (default: the file's base name)"},
      {"model", 0, true, "ID", "model id"},
      {"input-shape", 0, true, "SHAPE", "input shape with batch, e.g. 1,1,28,28"},
      {"input-dtype", 0, true, "D",
       "inspect: dtype of the probe input, float32 (default) or int64 for token ids; "
       "default with --data: the dataset's"},
      {"loss", 0, true, "L",
       "auto (default), cross_entropy, pseudo_label, mse or language_modeling (next-token "
       "cross-entropy; QUANTIZE reports perplexity)"},
      {"lm-ignore-id", 0, true, "ID", "language_modeling: a token id (padding) never predicted"},
      {"data", 0, true, "DATASET_ID", "calibration dataset (inspect: whose example shape to use)"},
      {"spec-json", 0, true, "FILE", "JobSpec as JSON; - reads stdin"},
      {"samples", 0, true, "N", "calibration examples (default 256)"},
      {"batch", 0, true, "N", "examples per batch (default 64)"},
      {"method", 0, true, "M", "HVP method: exact (default), fd, ggn, fisher"},
      {"fallback", 0, true, "F",
       "without double backward: fd (default; Fisher if fd fails its check), fisher, none"},
      {"scope", 0, true, "S", "eigenvalues of the model (default), each layer or block"},
      {"eigen-method", 0, true, "M",
       "power (default; PyHessian) or lanczos (both ends of an indefinite spectrum)"},
      {"probes", 0, true, "N", "Hutchinson probes at most (default 200)"},
      {"eigen", 0, true, "K", "also the top K Hessian eigenvalues"},
      {"density", 0, false, "", "also the spectral density (SLQ)"},
      {"qbert", 0, true, "SUBSETS", "also Q-BERT scores over data subsets"},
      {"eval", 0, true, "DATASET_ID", "evaluation data for top-1 accuracy"},
      {"eval-samples", 0, true, "N", "evaluate on the first N examples (default all)"},
      {"bits", 0, true, "AVG", "budget: average weight bits (default 4)"},
      {"avg-bits", 0, true, "AVG", "same as --bits"},
      {"bytes", 0, true, "N", "budget: bytes of the packed weights file"},
      {"bops", 0, true, "N", "budget: bit-operations (MACs x weight bits x 32)"},
      {"search", 0, true, "S", "exact (default), pareto, bisection (needs --eval), uniform"},
      {"max-drop", 0, true, "PP", "tolerated top-1 drop in percentage points (bisection)"},
      {"max-relative-drop", 0, true, "F", "tolerated top-1 drop as a fraction (bisection)"},
      {"gptq", 0, false, "", "round with GPTQ instead of round-to-nearest"},
      {"head-refit", 0, true, "N",
       "re-fit the head after rounding: at most N regularized Newton steps (README \"Head "
       "re-fit\")"},
      {"head-hessian", 0, true, "H",
       "head re-fit Hessian: auto (default: exact up to 4096 parameters), exact or kfac"},
      {"head-alpha", 0, true, "A", "head re-fit: λ = c·‖g‖^A (default 0.5)"},
      {"int8", 0, false, "",
       "also write model_int8.pt (8-bit weights and activations, LibTorch's quantized engine)"},
      {"asymmetric", 0, false, "", "asymmetric quantizer (default symmetric)"},
      {"granularity", 0, true, "G", "tensor, channel (default) or group"},
      {"group-size", 0, true, "N", "32, 64 or 128 (default 128) for --granularity group"},
      {"candidates", 0, true, "BITS", "candidate widths, e.g. 2,3,4,8 (default; float always)"},
      {"pin", 0, true, "L=B,...",
       "pin layers to bits (16/32 = float); default first and last at 8; none = no pins"},
      {"tie", 0, true, "A,B;C,D", "layers that share their bits (groups split by ';')"},
      {"omega", 0, true, "O",
       "sensitivity: quadratic (default; ½δᵀHδ, an HVP per layer and width) or trace "
       "(HAWQ-V2; the default with --sensitivity)"},
      {"sensitivity", 0, true, "JOB", "reuse the traces of a SUCCEEDED ANALYZE job"},
      {"allow-unconverged", 0, false, "",
       "accept --sensitivity traces that did not converge (refused by default)"},
      {"flops", 0, true, "F", "prune target: fraction of FLOPs to remove (default 0.5)"},
      {"params", 0, true, "F", "prune target: fraction of parameters to remove"},
      {"latency", 0, true, "F", "prune target: fraction of measured latency to remove"},
      {"saliency", 0, true, "K", "hessian (default), taylor or magnitude"},
      {"latency-weight", 0, true, "X", "weight of the latency saved in the ranking (default 0)"},
      {"head-group", 0, true, "N", "heads per pruning unit (default 1)"},
      {"mlp-group", 0, true, "N", "MLP neurons per pruning unit (default 16)"},
      {"rounds", 0, true, "N", "pruning rounds (default 4)"},
      {"recovery-steps", 0, true, "N", "distillation steps after each round (default 100)"},
      {"lr", 0, true, "X", "recovery learning rate (default 1e-4)"},
      {"temperature", 0, true, "T", "distillation temperature (default 1)"},
      {"optimizer", 0, true, "O", "recovery optimizer: adam (default), sgd, or newton (only the head, "
       "regularized Newton; --recovery-steps caps its iterations)"},
      {"saliency-samples", 0, true, "N", "calibration examples scored (default 512)"},
      {"device", 0, true, "DEV", "auto (default), cpu or cuda:N"},
      {"seed", 0, true, "N", "random seed (default: the server picks)"},
      {"request-id", 0, true, "R", "idempotency key for the submission"},
      {"deadline", 0, true, "S", "job run-time limit in seconds"},
      {"watch", 0, false, "", "follow the job until it ends"},
      {"state", 0, true, "S", "queued|running|succeeded|failed|cancelled"},
      {"kind", 0, true, "K", "inspect|analyze|quantize|prune|compress"},
      {"output", 'o', true, "DIR", "output directory (default .)"},
  };
  return *flags;
}

std::string UsageText() {
  std::string text =
      "usage: compressctl [--server ADDR] [--json] [--timeout SECONDS] [--token TOKEN]\n"
      "                   [--tls] [--ca FILE] [--cert FILE --key FILE] [--tls-server-name NAME]\n"
      "                   COMMAND ...\n\nCommands:\n";
  // Synopses longer than the column get a line of their own.
  constexpr size_t kColumn = 36;
  for (const CommandDef& c : Commands()) {
    const std::string synopsis = absl::StrCat("  ", Synopsis(c));
    if (synopsis.size() + 2 > kColumn) {
      absl::StrAppend(&text, synopsis, "\n", std::string(kColumn, ' '), c.help, "\n");
    } else {
      absl::StrAppend(&text, synopsis, std::string(kColumn - synopsis.size(), ' '), c.help, "\n");
    }
  }
  absl::StrAppend(&text,
                  "\nJob flags (inspect, analyze, quantize, prune, compress, job submit):\n"
                  "  --device DEV  --seed N  --request-id R  --deadline S  --watch\n"
                  "\nFlags:\n");
  std::vector<std::vector<std::string>> rows;
  for (const FlagDef& f : Flags()) rows.push_back({"  " + FlagSynopsis(f), f.help});
  const std::string table = FormatTable({{""}, {""}}, rows);
  absl::StrAppend(&text, table.substr(table.find('\n') + 1));
  absl::StrAppend(&text,
                  "\nIds in tables are cut to 12 characters; a unique prefix of 4 or more\n"
                  "characters works wherever an ID is asked for. --watch draws a progress\n"
                  "bar on a terminal and prints one line per event otherwise.\n"
                  "Exit codes: 0 ok, 1 error or watched job not SUCCEEDED, 2 usage.\n");
  return text;
}

absl::StatusOr<Invocation> ParseCommandLine(const std::vector<std::string>& args) {
  ASSIGN_OR_RETURN(ParsedArgs parsed, ParseArgs(args, Flags()));
  return ResolveCommand(parsed, Commands(), GlobalFlagNames());
}

int RunCli(const std::vector<std::string>& args, const CliEnvironment& env) {
  std::ostream& err = *env.err;
  // The command named by the longest matching prefix of `words`, if any.
  auto named_command = [](const std::vector<std::string>& words) {
    const CommandDef* named = nullptr;
    for (const CommandDef& c : Commands()) {
      if (c.words.size() <= words.size() &&
          std::equal(c.words.begin(), c.words.end(), words.begin()) &&
          (named == nullptr || c.words.size() > named->words.size())) {
        named = &c;
      }
    }
    return named;
  };
  auto usage_error = [&](absl::string_view message, const CommandDef* command) {
    err << "error: " << message << "\n";
    if (command != nullptr) {
      err << "usage: compressctl " << Synopsis(*command) << "\n";
    } else {
      err << "run 'compressctl help' for usage\n";
    }
    return kExitUsage;
  };

  if (args.empty()) {
    err << UsageText();
    return kExitUsage;
  }
  absl::StatusOr<ParsedArgs> parsed = ParseArgs(args, Flags());
  if (!parsed.ok()) {
    // Flags could not be told from values; the leading words still name
    // the command in the common case ("model list --bogus").
    std::vector<std::string> words;
    for (const std::string& a : args) {
      if (absl::StartsWith(a, "-")) break;
      words.push_back(a);
    }
    return usage_error(parsed.status().message(), named_command(words));
  }
  if (parsed->Has("help") || (!parsed->positional.empty() && parsed->positional[0] == "help")) {
    *env.out << UsageText();
    return kExitOk;
  }
  absl::StatusOr<Invocation> inv = ResolveCommand(*parsed, Commands(), GlobalFlagNames());
  if (!inv.ok()) {
    return usage_error(inv.status().message(), named_command(parsed->positional));
  }

  Client::Options options;
  options.address = inv->Get("server", env.server.empty() ? kDefaultServer : env.server);
  options.token = inv->Get("token", env.token);
  options.tls = inv->Has("tls");
  options.ca_file = inv->Get("ca", env.ca);
  options.cert_file = inv->Get("cert", env.cert);
  options.key_file = inv->Get("key", env.key);
  options.tls_server_name = inv->Get("tls-server-name", env.tls_server_name);
  if (inv->Has("timeout")) {
    absl::StatusOr<double> seconds = ParseSeconds(inv->Get("timeout"));
    if (!seconds.ok()) {
      return usage_error(absl::StrCat("--timeout: ", seconds.status().message()), inv->command);
    }
    options.timeout = absl::Seconds(*seconds);
  }
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) return usage_error(client.status().message(), inv->command);

  const Handler* handler = nullptr;
  for (const Entry& e : Entries()) {
    if (e.def.words == inv->command->words) handler = &e.handler;
  }
  const Context ctx{*inv, env, **client, inv->Has("json")};
  absl::StatusOr<int> code = (*handler)(ctx);
  env.out->flush();
  if (code.ok()) return *code;
  if (IsUsageError(code.status())) {
    return usage_error(code.status().message(), inv->command);
  }
  // The server's message may repeat a name or an id: one line, escaped.
  err << "error: " << absl::StatusCodeToString(code.status().code()) << ": "
      << EscapeControl(code.status().message()) << "\n";
  return kExitFailure;
}

}  // namespace compress::client
