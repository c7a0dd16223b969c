// Command-line parsing for compressctl: a small parser for
// "WORD WORD ARG... --flag value" command lines (absl flags has no
// subcommands), plus parsers for the values flags carry.
//
//   std::vector<FlagDef> flags = {{"server", 0, true, "ADDR", "..."},
//                                 {"json", 0, false, "", "..."}};
//   std::vector<CommandDef> commands = {{{"model", "get"}, "ID", "", 1, 1, {},
//   ""}}; ASSIGN_OR_RETURN(ParsedArgs parsed, ParseArgs(argv, flags));
//   ASSIGN_OR_RETURN(Invocation inv, ResolveCommand(parsed, commands,
//   {"server", "json"}));
//
// Syntax: `--name value`, `--name=value`, `-x value` for flags with a short
// name, `--switch` for flags without a value; flags may appear anywhere, the
// last occurrence wins; `--` ends flag parsing; a lone `-` is positional
// (stdin). All functions are pure; errors are INVALID_ARGUMENT with a message
// meant for the user.
#ifndef COMPRESS_CLIENT_ARGS_H_
#define COMPRESS_CLIENT_ARGS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace compress::client {

struct FlagDef {
  std::string name;          // long name without dashes, e.g. "server"
  char short_name = 0;       // e.g. 'o' for "-o"; 0 = none
  bool takes_value = false;  // false: a switch such as --json
  std::string value_name;    // placeholder in usage text, e.g. "ADDR"
  std::string help;
};

struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::string>
      flags;  // long name -> value ("" for switches)

  bool Has(absl::string_view name) const;
  std::string Get(absl::string_view name,
                  absl::string_view fallback = "") const;
};

absl::StatusOr<ParsedArgs> ParseArgs(const std::vector<std::string>& argv,
                                     const std::vector<FlagDef>& flags);

struct CommandDef {
  std::vector<std::string> words;  // e.g. {"model", "upload"}
  std::string args_usage;          // positionals, e.g. "FILE", "JOB [NAME]"
  std::string flags_usage;         // for help, e.g. "[--name N]"
  int min_args = 0;
  int max_args = 0;
  std::vector<std::string> flags;  // long names allowed besides the globals
  std::string help;                // one line

  std::string Name() const;  // words joined by spaces
};

struct Invocation {
  const CommandDef* command = nullptr;  // points into the commands vector
  std::vector<std::string> args;        // positionals after the command words
  std::map<std::string, std::string> flags;

  bool Has(absl::string_view name) const;
  std::string Get(absl::string_view name,
                  absl::string_view fallback = "") const;
};

// Picks the command whose words are the longest prefix of the positionals,
// then checks the argument count and that every flag is global or allowed
// for that command.
absl::StatusOr<Invocation> ResolveCommand(
    const ParsedArgs& parsed, const std::vector<CommandDef>& commands,
    const std::vector<std::string>& global_flags);

// "1,1,28,28" -> {1, 1, 28, 28}. Dimensions are positive integers; spaces
// around commas are allowed.
absl::StatusOr<std::vector<int64_t>> ParseShape(absl::string_view text);

// Non-negative decimal seconds, e.g. "30" or "2.5".
absl::StatusOr<double> ParseSeconds(absl::string_view text);

absl::StatusOr<int64_t> ParseNonNegativeInt(absl::string_view text);
absl::StatusOr<uint64_t> ParseUint64(absl::string_view text);

}  // namespace compress::client

#endif  // COMPRESS_CLIENT_ARGS_H_
