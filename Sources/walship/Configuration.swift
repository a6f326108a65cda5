import ArgumentParser
import Foundation
import WalshipConfig

/// `--config FILE` of the commands the file configures. The file has been read into the command line before parsing
/// (see `Walship.main`); the option is declared so that help lists it and parsing accepts it.
struct ConfigFileOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "TOML file with the options of this command, in its table ([send], [receive], [backup], [promote], [drill], [restore], [status], [switchover], [prune], [check]; see docs/deployment.md). Precedence: command line, then WALSHIP_<OPTION> environment variables, then the file.",
            valueName: "file"))
    var config: String?
}

enum WalshipConfiguration {
    /// The commands a configuration file configures, with the options they take.
    static let schema = ConfigSchema(
        roles: [
            "send": OptionSchema.options(of: Send.self), "receive": OptionSchema.options(of: Receive.self),
            "switchover": OptionSchema.options(of: Switchover.self), "backup": OptionSchema.options(of: Backup.self),
            "promote": OptionSchema.options(of: Promote.self), "drill": OptionSchema.options(of: Drill.self),
            "restore": OptionSchema.options(of: Restore.self), "status": OptionSchema.options(of: Status.self),
            "prune": OptionSchema.options(of: Prune.self), "check": OptionSchema.options(of: Check.self),
        ],
        exclusions: [
            [["insecure"], ["tls-cert", "tls-key", "tls-ca"]],
            [["standby-trust"], ["standby-password-file"]],
        ],
        secrets: ["source", "alert-webhook", "primary-conninfo"],
        // The top level holds what both daemons share; the operator's commands read their tables too.
        sharedAcross: daemons)

    /// The long-running commands (what `walship check` tests), beside the operator's commands the file also configures.
    static let daemons: Set<String> = ["send", "receive"]

    /// The configuration file named by `--config` in `arguments`, else by WALSHIP_CONFIG.
    static func path(in arguments: [String], environment: [String: String]) -> String? {
        for (index, token) in arguments.enumerated() {
            if token == "--" { break }
            if token == "--config", index + 1 < arguments.count { return arguments[index + 1] }
            if token.hasPrefix("--config=") { return String(token.dropFirst("--config=".count)) }
        }
        if let path = environment["WALSHIP_CONFIG"], !path.isEmpty { return path }
        return nil
    }

    /// A command's arguments with the configuration file's and the environment's values added.
    static func expand(role: String, arguments: [String], environment: [String: String]) throws -> Expansion {
        let file = try path(in: arguments, environment: environment).map { try ConfigFile.load(path: $0) }
        return try Layering.expand(arguments: arguments, role: role, schema: schema, file: file, environment: environment)
    }
}

extension Walship {
    /// ArgumentParser's entry point, with the configuration file and WALSHIP_* variables layered under the
    /// command line of `send` and `receive` before it parses, so the commands' own validation judges the
    /// result, and an error about a value that came from the file or the environment says so.
    static func main() async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        limitAllocatorFootprint(keepFreeHeap: arguments.first == "send")
        var expansion: Expansion?
        if let role = arguments.first, WalshipConfiguration.schema.roles[role] != nil {
            do {
                let expanded = try WalshipConfiguration.expand(
                    role: role, arguments: Array(arguments.dropFirst()),
                    environment: ProcessInfo.processInfo.environment)
                arguments = [role] + expanded.arguments
                expansion = expanded
            } catch {
                // A file that does not load is what walship check reports, as its "configuration" line.
                if role != "check" {
                    writeDiagnostic(Data("walship \(role): error: \(error)\n".utf8))
                    Foundation.exit(WalshipExit.usage.rawValue)
                }
            }
        }
        let command: any ParsableCommand
        do {
            command = try parseAsRoot(arguments)
        } catch {
            let code = exitCode(for: error)
            guard code != .success else { exit(withError: error) }
            // A size or duration that did not parse is explained (why, and the nearest valid form).
            var message = UnitArguments.explain(fullMessage(for: error))
            if let expansion { message = expansion.annotate(message) }
            writeDiagnostic(Data((message.hasSuffix("\n") ? message : message + "\n").utf8))
            Foundation.exit(code.rawValue)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var syncCommand = command
                try syncCommand.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// glibc gives threads that allocate their own arenas, and after a large block is freed it raises its mmap
/// threshold, so later 16 MB segment buffers come from the heap and stay resident once freed. Two arenas and
/// a fixed 4 MB threshold keep the resident set close to what is in use, while the 1 MiB chunk buffers the
/// link cycles through still come from the heap: mapped one by one, each cost an mmap, page faults and an
/// munmap with a TLB flush on every CPU. For the same reason the sender (`keepFreeHeap`) keeps up to 8 MiB
/// free at the top of the heap instead of 128 KiB: trimming it after each chunk and faulting it back in for
/// the next cost about a tenth of its catch-up CPU. It costs about 8 MiB of peak resident memory, which the
/// sender can spare and the receiver, whose page faults cost less, cannot. (MALLOC_ARENA_MAX,
/// MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ in the environment still win: glibc reads them first.)
func limitAllocatorFootprint(keepFreeHeap: Bool) {
    #if os(Linux)
    let environment = ProcessInfo.processInfo.environment
    if environment["MALLOC_ARENA_MAX"] == nil { _ = glibcMallopt(mallocArenaMax, 2) }
    if environment["MALLOC_MMAP_THRESHOLD_"] == nil { _ = glibcMallopt(mallocMmapThreshold, 4 << 20) }
    if keepFreeHeap && environment["MALLOC_TRIM_THRESHOLD_"] == nil { _ = glibcMallopt(mallocTrimThreshold, 8 << 20) }
    #endif
}

#if os(Linux)
// <malloc.h> is not part of the Glibc module; these are its M_ARENA_MAX, M_MMAP_THRESHOLD and M_TRIM_THRESHOLD.
private let mallocArenaMax: Int32 = -8
private let mallocMmapThreshold: Int32 = -3
private let mallocTrimThreshold: Int32 = -1
@_silgen_name("mallopt") private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
#endif
