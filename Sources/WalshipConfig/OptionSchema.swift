import ArgumentParser
import Foundation

/// One option a command takes, as the configuration file and the environment may give it.
public struct OptionSpec: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// Present or absent (`--sync`).
        case flag
        /// One value (`--slot NAME`).
        case option
        /// Any number of values (`--allow-source A --allow-source B`).
        case repeating
    }

    /// The long name without dashes: the configuration key.
    public var name: String
    public var kind: Kind
    /// Single-letter names, to see whether the command line already gives the option.
    public var shortNames: [String]

    public init(name: String, kind: Kind, shortNames: [String] = []) {
        self.name = name
        self.kind = kind
        self.shortNames = shortNames
    }

    /// The environment variable that overrides the file: WALSHIP_ and the name in upper snake case.
    public var environmentName: String { "WALSHIP_" + name.uppercased().replacingOccurrences(of: "-", with: "_") }
}

public enum OptionSchema {
    /// Options no configuration gives: they act at once instead of configuring a service.
    public static let notConfigurable: Set<String> = [
        "help", "version", "config", "experimental-dump-help", "generate-completion-script",
    ]

    /// Options that override a safety check (`walship receive --force` accepts WAL for a fenced system): a person
    /// types them for one run, so neither a file nor a WALSHIP_* variable left behind can give them.
    public static let commandLineOnly: Set<String> = ["force"]

    /// Refuses `key` from `place` when it is a command-line-only option; `remedy` says how to take it away.
    static func refuseCommandLineOnly(_ key: String, in place: String, remedy: String) throws {
        guard commandLineOnly.contains(key) else { return }
        throw ConfigError(
            "\(place) sets \(key), which walship takes only from the command line: --\(key) overrides a safety check and must be typed for the run that needs it (hint: \(remedy))"
        )
    }

    /// The options of `command`, read from its own ArgumentParser definition, so an option added to the
    /// command is a valid configuration key with no further change.
    public static func options(of command: any ParsableArguments.Type) -> [OptionSpec] {
        guard let data = command._dumpHelp().data(using: .utf8),
            let info = try? JSONDecoder().decode(DumpedTool.self, from: data)
        else { return [] }
        var specs: [OptionSpec] = []
        for argument in info.command.arguments ?? [] where argument.kind != "positional" {
            let names = argument.names ?? []
            guard let long = names.first(where: { $0.kind == "long" })?.name, !notConfigurable.contains(long),
                !commandLineOnly.contains(long)
            else { continue }
            let kind: OptionSpec.Kind = argument.kind == "flag" ? .flag : argument.isRepeating ? .repeating : .option
            specs.append(OptionSpec(name: long, kind: kind, shortNames: names.filter { $0.kind == "short" }.map(\.name)))
        }
        return specs
    }

    // The subset of ArgumentParser's documented `--experimental-dump-help` JSON (ToolInfoV0) read here.
    struct DumpedTool: Decodable {
        struct Command: Decodable { var arguments: [Argument]? }
        struct Argument: Decodable {
            struct Name: Decodable {
                var kind: String
                var name: String
            }
            var kind: String
            var names: [Name]?
            var isRepeating: Bool
        }
        var command: Command
    }
}

/// The closest of `candidates` to `word`, when close enough to be a likely misspelling.
func nearest(_ word: String, in candidates: [String]) -> String? {
    var best: String?
    var distance = Int.max
    for candidate in candidates.sorted() {
        let d = editDistance(word, candidate)
        if d < distance { (best, distance) = (candidate, d) }
    }
    guard let best else { return nil }
    // Underscores for dashes, or a word or two off, still count as the same key.
    if best == word.replacingOccurrences(of: "_", with: "-") { return best }
    return distance <= max(2, word.count / 3) ? best : nil
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
            current[j] = Swift.min(previous[j] + 1, current[j - 1] + 1, substitution)
        }
        previous = current
    }
    return previous[b.count]
}
