#include "client/args.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace compress::client {
namespace {

const FlagDef* FindLong(const std::vector<FlagDef>& flags,
                        absl::string_view name) {
  for (const FlagDef& f : flags) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

const FlagDef* FindShort(const std::vector<FlagDef>& flags, char name) {
  for (const FlagDef& f : flags) {
    if (f.short_name != 0 && f.short_name == name) return &f;
  }
  return nullptr;
}

std::string Lookup(const std::map<std::string, std::string>& flags,
                   absl::string_view name, absl::string_view fallback) {
  auto it = flags.find(std::string(name));
  return it == flags.end() ? std::string(fallback) : it->second;
}

}  // namespace

bool ParsedArgs::Has(absl::string_view name) const {
  return flags.count(std::string(name)) > 0;
}

std::string ParsedArgs::Get(absl::string_view name,
                            absl::string_view fallback) const {
  return Lookup(flags, name, fallback);
}

bool Invocation::Has(absl::string_view name) const {
  return flags.count(std::string(name)) > 0;
}

std::string Invocation::Get(absl::string_view name,
                            absl::string_view fallback) const {
  return Lookup(flags, name, fallback);
}

std::string CommandDef::Name() const { return absl::StrJoin(words, " "); }

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& argv,
                                     const std::vector<FlagDef>& flags) {
  ParsedArgs parsed;
  bool flags_done = false;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (flags_done || arg == "-" || arg.empty() || arg[0] != '-') {
      parsed.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      flags_done = true;
      continue;
    }
    const FlagDef* def = nullptr;
    std::string shown;  // the flag as the user typed it, for messages
    std::string inline_value;
    bool has_inline_value = false;
    if (absl::StartsWith(arg, "--")) {
      absl::string_view body = absl::string_view(arg).substr(2);
      const size_t eq = body.find('=');
      if (eq != absl::string_view::npos) {
        inline_value = std::string(body.substr(eq + 1));
        has_inline_value = true;
        body = body.substr(0, eq);
      }
      shown = absl::StrCat("--", body);
      def = FindLong(flags, body);
    } else {
      shown = arg;
      if (arg.size() == 2) def = FindShort(flags, arg[1]);
    }
    if (def == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", shown));
    }
    if (!def->takes_value) {
      if (has_inline_value) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag ", shown, " takes no value"));
      }
      parsed.flags[def->name] = "";
      continue;
    }
    if (has_inline_value) {
      parsed.flags[def->name] = inline_value;
    } else if (i + 1 < argv.size()) {
      parsed.flags[def->name] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "flag ", shown, " needs a value (", def->value_name, ")"));
    }
  }
  return parsed;
}

absl::StatusOr<Invocation> ResolveCommand(
    const ParsedArgs& parsed, const std::vector<CommandDef>& commands,
    const std::vector<std::string>& global_flags) {
  if (parsed.positional.empty()) {
    return absl::InvalidArgumentError("missing command");
  }
  const CommandDef* best = nullptr;
  for (const CommandDef& c : commands) {
    if (c.words.size() > parsed.positional.size()) continue;
    if (!std::equal(c.words.begin(), c.words.end(),
                    parsed.positional.begin())) {
      continue;
    }
    if (best == nullptr || c.words.size() > best->words.size()) best = &c;
  }
  if (best == nullptr) {
    // Name the group when the first word is known ("model frob").
    const std::string& first = parsed.positional[0];
    bool known_group = false;
    for (const CommandDef& c : commands) known_group |= c.words[0] == first;
    if (known_group && parsed.positional.size() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown command '", first, " ", parsed.positional[1], "'"));
    }
    if (known_group) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", first, "' needs a subcommand"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unknown command '", first, "'"));
  }

  Invocation inv;
  inv.command = best;
  inv.args.assign(parsed.positional.begin() + best->words.size(),
                  parsed.positional.end());
  const int n = static_cast<int>(inv.args.size());
  if (n < best->min_args) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", best->Name(), "' needs ",
        best->args_usage.empty() ? "arguments" : best->args_usage));
  }
  if (n > best->max_args) {
    return absl::InvalidArgumentError(absl::StrCat(
        "too many arguments for '", best->Name(), "': ",
        absl::StrJoin(inv.args.begin() + best->max_args, inv.args.end(), " ")));
  }
  for (const auto& [name, value] : parsed.flags) {
    const bool allowed = std::find(global_flags.begin(), global_flags.end(),
                                   name) != global_flags.end() ||
                         std::find(best->flags.begin(), best->flags.end(),
                                   name) != best->flags.end();
    if (!allowed) {
      return absl::InvalidArgumentError(absl::StrCat(
          "flag --", name, " does not apply to '", best->Name(), "'"));
    }
  }
  inv.flags = parsed.flags;
  return inv;
}

absl::StatusOr<std::vector<int64_t>> ParseShape(absl::string_view text) {
  std::vector<int64_t> shape;
  if (absl::StripAsciiWhitespace(text).empty()) {
    return absl::InvalidArgumentError("empty shape");
  }
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    int64_t dim = 0;
    if (!absl::SimpleAtoi(part, &dim) || dim <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad shape '", text, "': dimension '", part,
          "' is not a positive integer (expected e.g. 1,1,28,28)"));
    }
    shape.push_back(dim);
  }
  return shape;
}

absl::StatusOr<double> ParseSeconds(absl::string_view text) {
  double seconds = 0;
  if (!absl::SimpleAtod(text, &seconds) || !std::isfinite(seconds) ||
      seconds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a number of seconds"));
  }
  return seconds;
}

absl::StatusOr<int64_t> ParseNonNegativeInt(absl::string_view text) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a non-negative integer"));
  }
  return value;
}

absl::StatusOr<uint64_t> ParseUint64(absl::string_view text) {
  uint64_t value = 0;
  if (absl::StartsWith(text, "-") || !absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not an unsigned integer"));
  }
  return value;
}

}  // namespace compress::client
