#include "server/pipeline/job_kind.h"

#include <algorithm>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "proto/compress/v1/job_kinds.h"

namespace compress::pipeline {
namespace v1 = compress::v1;

absl::Status JobKindRegistry::Register(std::unique_ptr<JobKindHandler> handler) {
  if (handler == nullptr) return absl::InvalidArgumentError("handler is null");
  const v1::JobKind kind = handler->kind();
  if (v1::KindFieldName(kind).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job kind ", static_cast<int>(kind), " has no JobSpec field"));
  }
  auto [it, inserted] = handlers_.emplace(kind, std::move(handler));
  if (!inserted) {
    return absl::AlreadyExistsError(
        absl::StrCat(v1::JobKind_Name(kind), " has a handler already"));
  }
  return absl::OkStatus();
}

const JobKindHandler* JobKindRegistry::Find(v1::JobKind kind) const {
  auto it = handlers_.find(kind);
  return it == handlers_.end() ? nullptr : it->second.get();
}

absl::StatusOr<const JobKindHandler*> JobKindRegistry::Resolve(const v1::JobSpec& spec) const {
  const v1::JobKind kind = v1::KindOf(spec);
  if (kind == v1::JOB_KIND_UNSPECIFIED) {
    std::vector<std::string> names;
    for (v1::JobKind k : kinds()) names.push_back(v1::KindFieldName(k));
    return absl::InvalidArgumentError(
        absl::StrCat("spec: one of ", absl::StrJoin(names, ", "), " is required"));
  }
  const JobKindHandler* handler = Find(kind);
  if (handler == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat(v1::JobKind_Name(kind), " jobs are not run by this server"));
  }
  return handler;
}

std::vector<v1::JobKind> JobKindRegistry::kinds() const {
  std::vector<v1::JobKind> out;
  for (const auto& [kind, handler] : handlers_) out.push_back(kind);
  return out;
}

std::vector<std::string> UniqueIds(std::vector<std::string> ids) {
  ids.erase(std::remove(ids.begin(), ids.end(), std::string()), ids.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

absl::Status WithResourceIds(const absl::Status& status, const std::vector<std::string>& ids,
                             Resources& resources) {
  if (status.ok()) return status;
  std::vector<std::pair<std::string, std::string>> replacements;
  for (const std::string& id : ids) {
    if (resources.GetModel(id).ok()) replacements.emplace_back(resources.ModelPath(id), id);
    if (resources.GetDataset(id).ok()) replacements.emplace_back(resources.DatasetPath(id), id);
  }
  std::string message(status.message());
  bool changed = false;
  for (const auto& [path, id] : replacements) {
    if (path.empty() || path == id || !absl::StrContains(message, path)) continue;
    message = absl::StrReplaceAll(message, {{path, id}});
    changed = true;
  }
  if (!changed) return status;
  absl::Status out(status.code(), message);
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace compress::pipeline
