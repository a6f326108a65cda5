import Foundation

/// Where an option's value came from. Precedence runs in this order: command line, environment, file.
public enum Origin: Sendable, Equatable, CustomStringConvertible {
    case commandLine
    case environment(String)
    case file(path: String, table: String?)

    var rank: Int {
        switch self {
        case .commandLine: 0
        case .environment: 1
        case .file: 2
        }
    }

    public var description: String {
        switch self {
        case .commandLine: "the command line"
        case .environment(let name): "the environment variable \(name)"
        case .file(let path, let table): table.map { "\(path) [\($0)]" } ?? "\(path) (top level)"
        }
    }
}

/// What the configuration file may hold: the options of each command that reads it.
public struct ConfigSchema: Sendable {
    /// The options of each command (`send`, `receive`), by command name.
    public var roles: [String: [OptionSpec]]
    /// Sets of options that exclude each other (`--insecure` and the TLS files): when a higher layer gives
    /// one set, a lower layer's values for the others are dropped, so `--insecure` on the command line
    /// overrides TLS files from the configuration file instead of contradicting them.
    public var exclusions: [[Set<String>]]
    /// Options whose values may be secret (a conninfo with a password): never printed in errors.
    public var secrets: Set<String>

    public init(
        roles: [String: [OptionSpec]], exclusions: [[Set<String>]] = [], secrets: Set<String> = [],
        sharedAcross: Set<String>? = nil
    ) {
        self.roles = roles
        self.sharedAcross = sharedAcross
        self.exclusions = exclusions
        self.secrets = secrets
    }

    /// The commands whose common options may stand at the top level of the file (the daemons'); nil: all.
    public var sharedAcross: Set<String>?

    /// Options every command of `sharedAcross` has: the only keys allowed at the top level of the file.
    var sharedNames: Set<String> {
        var shared: Set<String>?
        for (role, specs) in roles where sharedAcross?.contains(role) ?? true {
            let names = Set(specs.map(\.name))
            shared = shared.map { $0.intersection(names) } ?? names
        }
        return shared ?? []
    }

    func spec(_ role: String, _ name: String) -> OptionSpec? { roles[role]?.first { $0.name == name } }

    /// Checks every table and key of `file`, whichever command reads it: a typo in `[receive]` is reported
    /// by `walship send` too, rather than lying in wait for the day the receiver restarts.
    public func validate(_ file: ConfigFile) throws {
        let path = file.path
        for table in file.tables.keys.sorted() where roles[table] == nil {
            let hint = nearest(table, in: Array(roles.keys)).map { "did you mean [\($0)]? " } ?? ""
            throw ConfigError(
                "\(path): unknown table [\(table)] (hint: \(hint)the tables are \(roles.keys.sorted().map { "[\($0)]" }.joined(separator: ", ")))"
            )
        }
        let shared = sharedNames
        for key in file.common.keys.sorted() {
            try OptionSchema.refuseCommandLineOnly(key, in: path, remedy: "delete \(key) from the file")
            guard shared.contains(key) else {
                let owners = roles.keys.sorted().filter { spec($0, key) != nil }
                if !owners.isEmpty {
                    throw ConfigError(
                        "\(path): \(key) is an option of walship \(owners.joined(separator: " and ")) only; put it under [\(owners[0])] (the top level holds options every command shares)"
                    )
                }
                let all = Set(roles.values.flatMap { $0.map(\.name) })
                let hint = nearest(key, in: Array(all)).map { "did you mean \($0)? " } ?? ""
                throw ConfigError(
                    "\(path): unknown key \(key) (hint: \(hint)keys are the long option names of walship \(roles.keys.sorted().joined(separator: "/")) --help)"
                )
            }
            // Shared keys have the same kind in every command; check against any.
            let any = roles.keys.sorted().compactMap { spec($0, key) }[0]
            try checkType(file.common[key]!, spec: any, place: "\(path): \(key)")
        }
        for (table, entries) in file.tables.sorted(by: { $0.key < $1.key }) {
            let names = roles[table]!.map(\.name)
            for key in entries.keys.sorted() {
                try OptionSchema.refuseCommandLineOnly(key, in: "\(path) [\(table)]", remedy: "delete \(key) from the file")
                guard let spec = spec(table, key) else {
                    let hint = nearest(key, in: names).map { "did you mean \($0)? " } ?? ""
                    throw ConfigError(
                        "\(path): [\(table)] has an unknown key \(key) (hint: \(hint)the keys are the long option names of walship \(table) --help)"
                    )
                }
                try checkType(entries[key]!, spec: spec, place: "\(path): [\(table)] \(key)")
            }
        }
    }

    func checkType(_ value: ConfigValue, spec: OptionSpec, place: String) throws {
        switch (spec.kind, value) {
        case (.flag, .bool):
            return
        case (.flag, _):
            throw ConfigError("\(place) is a flag: write true or false, not \(value.typeName)")
        case (_, .bool):
            throw ConfigError("\(place) takes a value (like --\(spec.name) VALUE), not a boolean")
        case (.option, .array):
            throw ConfigError("\(place) takes one value, not an array")
        case (.repeating, .array(let items)):
            for item in items where item.argumentText == nil {
                throw ConfigError("\(place): every element must be a string or a number, not \(item.typeName)")
            }
        case (_, .other):
            throw ConfigError("\(place) must be a string or a number, not \(value.typeName)")
        default:
            return
        }
    }
}

/// A command line with the configuration's values added, and where each value came from.
public struct Expansion: Sendable, Equatable {
    public var arguments: [String]
    public var origins: [String: Origin]
    /// Values of secret options, wherever they came from, to be hidden in error messages.
    public var secretValues: [String]

    /// `message` (an error about the expanded command line) with secrets hidden and a note naming the
    /// source of every option it mentions that the command line did not give.
    public func annotate(_ message: String) -> String {
        var text = message
        for secret in secretValues where !secret.isEmpty {
            text = text.replacingOccurrences(of: secret, with: "(hidden)")
        }
        let notes = origins.sorted { $0.key < $1.key }.compactMap { name, origin -> String? in
            guard origin != .commandLine, text.contains("--\(name)") else { return nil }
            return "note: --\(name) came from \(origin)"
        }
        guard !notes.isEmpty else { return text }
        return text.trimmingCharacters(in: .newlines) + "\n" + notes.joined(separator: "\n") + "\n"
    }
}

public enum Layering {
    /// Adds to `arguments` (a command's own arguments, after its name) every option of `role` the command
    /// line does not give: from `WALSHIP_<NAME>` in `environment`, else from the file's `[role]` table,
    /// else from its top level. Values become `--name=value` (so a value starting with a dash stays a
    /// value), arrays repeat the option, and `true` flags appear as `--name`.
    public static func expand(
        arguments: [String], role: String, schema: ConfigSchema, file: ConfigFile?,
        environment: [String: String]
    ) throws -> Expansion {
        guard let specs = schema.roles[role] else { throw ConfigError("walship \(role) takes no configuration file") }
        if let file { try schema.validate(file) }
        for name in OptionSchema.commandLineOnly.sorted() {
            let variable = OptionSpec(name: name, kind: .flag).environmentName
            if environment[variable] != nil {
                try OptionSchema.refuseCommandLineOnly(
                    name, in: "the environment variable \(variable)", remedy: "unset \(variable)")
            }
        }
        let commandLine = givenOnCommandLine(arguments, specs: specs)

        var chosen: [String: (origin: Origin, values: [String])] = [:]
        for spec in specs {
            if let values = commandLine[spec.name] {
                chosen[spec.name] = (.commandLine, values)
            } else if let text = environment[spec.environmentName], !text.isEmpty {
                chosen[spec.name] = (.environment(spec.environmentName), try environmentValues(text, spec: spec))
            } else if let file, let value = file.tables[role]?[spec.name] {
                chosen[spec.name] = (.file(path: file.path, table: role), fileValues(value, spec: spec))
            } else if let file, let value = file.common[spec.name] {
                chosen[spec.name] = (.file(path: file.path, table: nil), fileValues(value, spec: spec))
            }
        }
        for group in schema.exclusions {
            let ranks = group.map { set in set.compactMap { chosen[$0]?.origin.rank }.min() }
            guard let best = ranks.compactMap({ $0 }).min() else { continue }
            for (set, rank) in zip(group, ranks) where rank.map({ $0 > best }) == true {
                for name in set where (chosen[name]?.origin.rank ?? -1) > best { chosen[name] = nil }
            }
        }

        var added: [String] = []
        for spec in specs {
            guard let (origin, values) = chosen[spec.name], origin != .commandLine else { continue }
            switch spec.kind {
            case .flag: if values == ["true"] { added.append("--\(spec.name)") }
            case .option, .repeating: added += values.map { "--\(spec.name)=\($0)" }
            }
        }
        var expanded = arguments
        // Options go before a `--` that ends the options, if there is one.
        expanded.insert(contentsOf: added, at: arguments.firstIndex(of: "--") ?? arguments.count)
        let secretValues = schema.secrets.flatMap { chosen[$0]?.values ?? [] }
        return Expansion(arguments: expanded, origins: chosen.mapValues(\.origin), secretValues: secretValues)
    }

    /// The options `arguments` gives, with their values where they can be seen (for hiding secrets).
    static func givenOnCommandLine(_ arguments: [String], specs: [OptionSpec]) -> [String: [String]] {
        var given: [String: [String]] = [:]
        var index = 0
        while index < arguments.count {
            let token = arguments[index]
            index += 1
            if token == "--" { break }
            let spec: OptionSpec?
            var inline: String?
            if token.hasPrefix("--") {
                let body = token.dropFirst(2)
                let name = body.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
                if body.contains("=") { inline = String(body.drop { $0 != "=" }.dropFirst()) }
                spec = specs.first { $0.name == name }
            } else if token.hasPrefix("-"), token.count == 2 {
                spec = specs.first { $0.shortNames.contains(String(token.dropFirst())) }
            } else {
                continue
            }
            guard let spec else { continue }
            var values = given[spec.name] ?? []
            if spec.kind != .flag {
                if let inline {
                    values.append(inline)
                } else if index < arguments.count {
                    values.append(arguments[index])
                    index += 1
                }
            }
            given[spec.name] = values
        }
        return given
    }

    static func environmentValues(_ text: String, spec: OptionSpec) throws -> [String] {
        switch spec.kind {
        case .flag:
            switch text.lowercased() {
            case "1", "true", "yes", "on": return ["true"]
            case "0", "false", "no", "off": return ["false"]
            default:
                throw ConfigError(
                    "\(spec.environmentName) is a flag: set it to true or false (or 1/0, yes/no, on/off), not \"\(text)\"")
            }
        case .option:
            return [text]
        case .repeating:
            // One variable, several values: separated by commas, as in WALSHIP_ALLOW_SOURCE=a=1,b=2.
            return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
    }

    static func fileValues(_ value: ConfigValue, spec: OptionSpec) -> [String] {
        switch value {
        case .bool(let flag): return [flag ? "true" : "false"]
        case .array(let items): return items.compactMap(\.argumentText)
        default: return value.argumentText.map { [$0] } ?? []
        }
    }
}
