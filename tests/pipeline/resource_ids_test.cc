// Job errors reach clients: WithResourceIds puts ids where engine messages
// named the server paths of a job's models and datasets.
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/pipeline/job_kind.h"

namespace compress::pipeline {
namespace {

namespace v1 = compress::v1;

class PathResources : public Resources {
 public:
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override {
    if (id != "m1") return absl::NotFoundError("no model");
    return v1::Model();
  }
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override {
    if (id != "d1" && id != "builtin:fashion-mnist/train") return absl::NotFoundError("no dataset");
    return v1::Dataset();
  }
  std::string ModelPath(const std::string& id) override { return "/srv/data/blobs/m/" + id; }
  std::string DatasetPath(const std::string& id) override {
    return id == "d1" ? "/srv/data/blobs/d/d1" : id;
  }
  std::string BuiltinDataDir() override { return ""; }
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override {
    return absl::NotFoundError("no job");
  }
};

TEST(WithResourceIdsTest, ReplacesEveryPathOfTheJobsResources) {
  PathResources resources;
  absl::Status s = absl::InvalidArgumentError(
      "model file /srv/data/blobs/m/m1 not found; dataset /srv/data/blobs/d/d1: bad, "
      "again /srv/data/blobs/d/d1");
  s.SetPayload("compress.jobs/worker-crash", absl::Cord("signal 9"));
  absl::Status named =
      WithResourceIds(s, {"m1", "d1", "builtin:fashion-mnist/train", "j9"}, resources);
  EXPECT_EQ(named.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(named.message(), "model file m1 not found; dataset d1: bad, again d1");
  EXPECT_EQ(named.GetPayload("compress.jobs/worker-crash"), absl::Cord("signal 9"));
}

TEST(WithResourceIdsTest, LeavesOtherStatusesAlone) {
  PathResources resources;
  EXPECT_TRUE(WithResourceIds(absl::OkStatus(), {"m1"}, resources).ok());
  const absl::Status builtin =
      absl::NotFoundError("builtin:fashion-mnist/train has no file /usr/share/x");
  EXPECT_EQ(WithResourceIds(builtin, {"builtin:fashion-mnist/train"}, resources), builtin);
}

}  // namespace
}  // namespace compress::pipeline
