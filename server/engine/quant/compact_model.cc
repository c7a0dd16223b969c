#include "server/engine/quant/compact_model.h"

#include <torch/csrc/jit/serialization/import.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/engine/model/model.h"
#include "server/util/status_macros.h"

namespace compress::engine {
namespace {

constexpr char kCodes[] = "_compressd_codes";
constexpr char kScale[] = "_compressd_scale";
constexpr char kZeroPoint[] = "_compressd_zero_point";
constexpr char kMeta[] = "_compressd_meta";
constexpr char kShape[] = "_compressd_shape";
// One list per quantized tensor, shared by the modules that hold it (tied
// weights): pickled once, so at load the first module's __setstate__ puts
// the rebuilt weight there and the others take that very tensor. Empty in
// the file (__getstate__ clears it).
constexpr char kTie[] = "_compressd_tie";

// The rebuild, shared by every module type that gets the methods: the codes
// are unpacked lane by lane, then quantizer.h's Dequantize and FromMatrix,
// operation for operation, so the weight is bitwise the simulated one.
constexpr char kDequantizeSource[] = R"(
def _compressd_dequantize(self, codes: Tensor, scale: Tensor, zero_point: Tensor,
                          meta: List[int], shape: List[int]) -> Tensor:
    width = meta[0]
    group_size = meta[1]
    axis = meta[2]
    rows = meta[3]
    cols = meta[4]
    if width < 8:
        lanes: List[Tensor] = []
        for i in range(8 // width):
            lanes.append(torch.bitwise_and(torch.bitwise_right_shift(codes, i * width),
                                           (1 << width) - 1))
        codes = torch.stack(lanes, -1)
    q = codes.reshape(-1).narrow(0, 0, rows * cols).reshape(rows, cols).float()
    s = scale.float()
    z = zero_point.float()
    if group_size > 0:
        s = s.repeat_interleave(group_size, 1).narrow(1, 0, cols)
        z = z.repeat_interleave(group_size, 1).narrow(1, 0, cols)
    moved: List[int] = [shape[axis]]
    for i in range(len(shape)):
        if i != axis:
            moved.append(shape[i])
    w = ((q - z) * s).reshape(moved).movedim(0, axis).contiguous()
    if meta[5] == 1 and not w.is_inference():
        w.requires_grad_(True)
    return w
)";

// Bits one code takes in the file: lanes of 2, 4 or 8 bits keep the
// unpacking to shifts and masks.
int LaneBits(int bits) { return bits <= 2 ? 2 : (bits <= 4 ? 4 : 8); }

struct Encoded {
  torch::Tensor codes, scale, zero_point;
  std::vector<int64_t> meta, shape;
};

absl::StatusOr<Encoded> Encode(const QuantizedTensor& q, const torch::Tensor& weight) {
  const torch::Device device = weight.device();
  ASSIGN_OR_RETURN(torch::Tensor matrix, ToMatrix(q.codes.cpu(), q.params.spec));
  const int width = LaneBits(q.params.spec.bits);
  const int64_t per_byte = 8 / width;
  torch::Tensor flat = matrix.contiguous().reshape({-1});
  const int64_t pad = (per_byte - flat.numel() % per_byte) % per_byte;
  if (pad > 0) flat = torch::cat({flat, torch::zeros({pad}, flat.options())});
  torch::Tensor lanes = flat.reshape({-1, per_byte});
  torch::Tensor packed = torch::zeros({lanes.size(0)}, flat.options());
  for (int64_t i = 0; i < per_byte; ++i) {
    packed.bitwise_or_(lanes.select(1, i).__lshift__(i * width));
  }
  Encoded e;
  e.codes = packed.to(device);
  e.scale = q.params.scale.to(device, torch::kFloat32).contiguous();
  e.zero_point = q.params.zero_point.to(device, torch::kUInt8).contiguous();
  const int64_t ndim = static_cast<int64_t>(q.params.shape.size());
  const int64_t axis = (q.params.spec.channel_axis % ndim + ndim) % ndim;
  const int64_t group =
      q.params.spec.granularity == QuantGranularity::kGroup ? q.params.spec.group_size : 0;
  e.meta = {width, group, axis, matrix.size(0), matrix.size(1), weight.requires_grad() ? 1 : 0};
  e.shape = q.params.shape;
  return e;
}

bool IsIdentifier(const std::string& name) {
  if (name.empty() || std::isdigit(static_cast<unsigned char>(name[0]))) return false;
  for (char ch : name) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_') return false;
  }
  return true;
}

// __getstate__/__setstate__ for a type with these attributes: the state is
// every attribute, `weight` as None where codes stand for it, then ours.
absl::StatusOr<std::string> StateMethods(const c10::ClassTypePtr& type) {
  if (type->findMethod("__getstate__") != nullptr || type->findMethod("__setstate__") != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(type->repr_str(), " has its own __getstate__/__setstate__"));
  }
  std::vector<std::string> types, values, restores;
  bool has_weight = false;
  for (size_t i = 0; i < type->numAttributes(); ++i) {
    const std::string& name = type->getAttributeName(i);
    const c10::TypePtr& t = type->getAttribute(i);
    if (!IsIdentifier(name)) {
      return absl::FailedPreconditionError(
          absl::StrCat(type->repr_str(), " has an attribute named \"", name, "\""));
    }
    if (!t->is_module() && t->cast<c10::ClassType>() != nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(type->repr_str(), ".", name, " is an object of class ", t->repr_str()));
    }
    if (t->is_module()) {
      return absl::FailedPreconditionError(
          absl::StrCat(type->repr_str(), ".", name, " is a submodule"));
    }
    if (name == "weight") {
      if (t->kind() != c10::TypeKind::TensorType) {
        return absl::FailedPreconditionError(
            absl::StrCat(type->repr_str(), ".weight is a ", t->annotation_str()));
      }
      has_weight = true;
      types.push_back("Optional[Tensor]");
      values.push_back("weight");
    } else {
      types.push_back(t->annotation_str());
      values.push_back(absl::StrCat("self.", name));
      restores.push_back(absl::StrCat("    self.", name, " = state[", i, "]\n"));
    }
  }
  if (!has_weight) {
    return absl::FailedPreconditionError(absl::StrCat(type->repr_str(), " has no weight"));
  }
  const size_t n = types.size();
  const size_t w = type->getAttributeSlot("weight");
  for (const char* name : {kCodes, kScale, kZeroPoint}) {
    types.push_back("Optional[Tensor]");
    values.push_back(absl::StrCat("self.", name));
  }
  for (const char* name : {kMeta, kShape}) {
    types.push_back("List[int]");
    values.push_back(absl::StrCat("self.", name));
  }
  types.push_back("List[Tensor]");
  values.push_back(absl::StrCat("self.", kTie));
  const std::string state = absl::StrCat("Tuple[", absl::StrJoin(types, ", "), "]");
  return absl::StrCat(
      "def __getstate__(self) -> ", state, ":\n",
      "    weight: Optional[Tensor] = self.weight\n",
      "    self.", kTie, ".clear()\n",
      "    if self.", kCodes, " is not None:\n",
      "        weight = None\n",
      "    return (", absl::StrJoin(values, ", "), ")\n\n",
      "def __setstate__(self, state: ", state, ") -> None:\n",
      absl::StrJoin(restores, ""),
      "    self.", kCodes, " = state[", n, "]\n",
      "    self.", kScale, " = state[", n + 1, "]\n",
      "    self.", kZeroPoint, " = state[", n + 2, "]\n",
      "    self.", kMeta, " = state[", n + 3, "]\n",
      "    self.", kShape, " = state[", n + 4, "]\n",
      "    self.", kTie, " = state[", n + 5, "]\n",
      "    weight = state[", w, "]\n",
      "    codes = state[", n, "]\n",
      "    scale = state[", n + 1, "]\n",
      "    zero_point = state[", n + 2, "]\n",
      "    tie = state[", n + 5, "]\n",
      "    if weight is not None:\n",
      "        self.weight = weight\n",
      "    elif codes is not None and scale is not None and zero_point is not None:\n",
      "        if len(tie) == 0:\n",
      "            tie.append(self._compressd_dequantize(codes, scale, zero_point, state[", n + 3,
      "], state[", n + 4, "]))\n",
      "        self.weight = tie[0]\n");
}

// Sets our attributes on one instance: the codes, or None (a float one).
void SetAttributes(torch::jit::Module& m, const Encoded* e, const c10::List<at::Tensor>& tie) {
  const c10::TypePtr optional = c10::OptionalType::create(c10::TensorType::get());
  const c10::TypePtr ints = c10::ListType::ofInts();
  auto tensor = [&](const torch::Tensor& t) { return e ? c10::IValue(t) : c10::IValue(); };
  m.register_attribute(kCodes, optional, tensor(e ? e->codes : torch::Tensor()));
  m.register_attribute(kScale, optional, tensor(e ? e->scale : torch::Tensor()));
  m.register_attribute(kZeroPoint, optional, tensor(e ? e->zero_point : torch::Tensor()));
  m.register_attribute(kMeta, ints, c10::List<int64_t>(e ? e->meta : std::vector<int64_t>{}));
  m.register_attribute(kShape, ints, c10::List<int64_t>(e ? e->shape : std::vector<int64_t>{}));
  m.register_attribute(kTie, c10::ListType::ofTensors(), tie);
}

// A copy with types of its own (methods added to its types stay there).
torch::jit::Module FreshCopy(const torch::jit::Module& module) {
  std::stringstream bytes;
  module.save(bytes);
  bytes.seekg(0);
  return torch::jit::load(bytes);
}

// Module path -> the tensor its weight holds, for every module holding a
// quantized one (ties included).
absl::StatusOr<std::map<std::string, const QuantizedTensor*>> Sites(
    const torch::jit::Module& copy, const std::map<std::string, QuantizedTensor>& layers) {
  std::map<std::string, const QuantizedTensor*> sites;
  std::set<std::string> paths;
  for (const auto& item : copy.named_modules()) paths.insert(item.name);
  for (const auto& [name, q] : layers) {
    if (paths.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("no module \"", name, "\" in the model"));
    }
    sites[name] = &q;
  }
  for (const auto& [alias, name] : TiedAliases(copy)) {
    const std::string suffix = ".weight";
    auto ends = [&](const std::string& s) {
      return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(),
                                                   suffix) == 0;
    };
    if (!ends(alias) || !ends(name)) continue;
    auto it = layers.find(name.substr(0, name.size() - suffix.size()));
    if (it != layers.end()) sites[alias.substr(0, alias.size() - suffix.size())] = &it->second;
  }
  return sites;
}

absl::Status Compact(torch::jit::Module& copy,
                     const std::map<std::string, QuantizedTensor>& layers, int64_t* count) {
  ASSIGN_OR_RETURN(auto sites, Sites(copy, layers));
  std::map<c10::ClassTypePtr, std::string> sources;  // types that get the methods
  std::vector<std::pair<torch::jit::Module, std::string>> modules;
  for (const auto& item : copy.named_modules()) modules.emplace_back(item.value, item.name);
  for (const auto& [m, path] : modules) {
    if (sites.count(path) == 0 || sources.count(m.type()) > 0) continue;
    if (m.type()->hasAttribute(kCodes)) {  // saved by us before: has the methods
      sources[m.type()] = "";
      continue;
    }
    ASSIGN_OR_RETURN(sources[m.type()], StateMethods(m.type()));
  }
  for (const auto& [m, path] : modules) {
    if (sites.count(path) == 0) continue;
    const torch::Tensor weight = m.attr("weight").toTensor();
    if (weight.scalar_type() != torch::kFloat32) {
      return absl::FailedPreconditionError(absl::StrCat(path, ".weight is not float32"));
    }
  }
  std::map<c10::ClassTypePtr, torch::jit::Module> defined;
  std::map<const QuantizedTensor*, c10::List<at::Tensor>> ties;
  for (auto& [m, path] : modules) {
    if (sources.count(m.type()) == 0) continue;
    auto site = sites.find(path);
    if (site == sites.end()) {
      SetAttributes(m, nullptr, c10::List<at::Tensor>());
      continue;
    }
    ASSIGN_OR_RETURN(Encoded e, Encode(*site->second, m.attr("weight").toTensor()));
    SetAttributes(m, &e, ties.emplace(site->second, c10::List<at::Tensor>()).first->second);
    defined.emplace(m.type(), m);
    ++*count;
  }
  for (auto& [type, m] : defined) {
    if (sources.at(type).empty()) continue;
    m.define(kDequantizeSource);
    m.define(sources.at(type));
  }
  return absl::OkStatus();
}

}  // namespace

void ForgetCodes(torch::jit::Module& module) {
  for (const auto& item : module.named_modules()) {
    torch::jit::Module m = item.value;
    if (!m.hasattr(kCodes)) continue;
    m.setattr(kCodes, c10::IValue());
    m.setattr(kTie, c10::List<at::Tensor>());
  }
}

absl::StatusOr<CompactModelInfo> SaveCompactModel(
    const torch::jit::Module& module, const std::map<std::string, QuantizedTensor>& layers,
    const std::string& path) {
  CompactModelInfo info;
  try {
    torch::jit::Module copy = FreshCopy(module);
    RETURN_IF_ERROR(Compact(copy, layers, &info.modules));
    std::ostringstream compact, plain;
    copy.save(compact);
    module.save(plain);
    // The methods' code outweighs the codes' savings on a tiny model.
    const bool smaller = compact.tellp() < plain.tellp();
    if (!smaller) info.modules = 0;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << (smaller ? compact.str() : plain.str());
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("cannot save the compact model: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot save the compact model: ", e.what()));
  }
  std::error_code ec;
  info.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec) return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", ec.message()));
  return info;
}

}  // namespace compress::engine
