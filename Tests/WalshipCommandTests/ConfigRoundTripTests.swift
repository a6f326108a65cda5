import ArgumentParser
import Foundation
import Testing
import WalshipConfig

@testable import walship

/// Every option of every command the configuration file configures, taken from the commands' own definitions (so an
/// option added later is covered without touching this test): set in the command's table with a TOML value of its
/// natural type, it parses to exactly what the same value on the command line gives (or fails the same way).
@Suite struct ConfigRoundTripTests {
    /// The subset of ArgumentParser's `--experimental-dump-help` document read here.
    struct Dump: Decodable {
        struct Command: Decodable { var arguments: [Argument]? }
        struct Argument: Decodable {
            struct Name: Decodable {
                var kind: String
                var name: String
            }
            var kind: String
            var names: [Name]?
            var valueName: String?
            var defaultValue: String?
        }
        var command: Command
    }

    static var roles: [String] { WalshipConfiguration.schema.roles.keys.sorted() }

    static func command(_ role: String) throws -> any ParsableCommand.Type {
        try #require(Walship.configuration.subcommands.first { $0._commandName == role }, "no command \(role)")
    }

    /// What each command needs on the command line to parse at all; given the same way on both sides.
    static let baseArguments: [String: [String]] = [
        "send": [
            "--source", "host=/tmp", "--to", "127.0.0.1:7000", "--slot", "walship", "--tls-cert", "/etc/walship/site.crt",
            "--tls-key", "/etc/walship/site.key", "--tls-ca", "/etc/walship/ca.crt",
        ],
        "receive": [
            "--listen", "127.0.0.1:7000", "--spool", "/var/lib/walship", "--tls-cert", "/etc/walship/site.crt", "--tls-key",
            "/etc/walship/site.key", "--tls-ca", "/etc/walship/ca.crt",
        ],
        "backup": [
            "--source", "host=/tmp", "--to", "127.0.0.1:7000", "--tls-cert", "/etc/walship/site.crt", "--tls-key",
            "/etc/walship/site.key", "--tls-ca", "/etc/walship/ca.crt",
        ],
        "promote": ["--pgdata", "/var/lib/postgresql/15/main", "--spool", "/var/lib/walship"],
        "drill": ["--spool", "/var/lib/walship"],
        "restore": ["--spool", "/var/lib/walship", "--pgdata", "/var/lib/postgresql/15/main"],
        "status": ["--url", "http://127.0.0.1:7002"],
        "switchover": ["--pgdata", "/var/lib/postgresql/15/main"],
        "prune": ["--spool", "/var/lib/walship"],
        "check": [],
    ]

    /// Options that parse only beside others (a group's switch, its partner): given on the command line on both sides.
    static func partners(_ role: String, _ option: String) -> [String] {
        if ["restore", "drill"].contains(role) {
            if option == "archive" { return ["--archive-endpoint", "http://127.0.0.1:9"] }
            if option.hasPrefix("archive-") || option == "encryption-keyring" {
                return ["--archive", "s3://bucket/prefix"]
                    + (option == "archive-endpoint" ? [] : ["--archive-endpoint", "http://127.0.0.1:9"])
            }
        }
        guard role == "receive" else { return [] }
        if option == "archive" { return ["--archive-endpoint", "http://127.0.0.1:9"] }
        if option.hasPrefix("archive-") || option.hasPrefix("encryption-") || option == "alert-archive-lag-seconds" {
            return ["--archive", "s3://bucket/prefix"]
                + (option == "archive-endpoint" ? [] : ["--archive-endpoint", "http://127.0.0.1:9"])
        }
        if option == "control-listen" { return ["--control-allow", "hospital"] }
        if option == "control-allow" { return ["--control-listen", "127.0.0.1:7003"] }
        if option == "standby-listen" { return ["--standby-trust"] }
        if option == "standby-trust" { return ["--standby-listen", "127.0.0.1:7010"] }
        if option == "standby-password-file" { return ["--standby-listen", "127.0.0.1:7010"] }
        if option == "standby-tls-cert" {
            return ["--standby-listen", "127.0.0.1:7010", "--standby-trust", "--standby-tls-key", "/k"]
        }
        if option == "standby-tls-key" {
            return ["--standby-listen", "127.0.0.1:7010", "--standby-trust", "--standby-tls-cert", "/c"]
        }
        return []
    }

    /// Values to try for an option, its default first: the first the command accepts is the one compared.
    static func candidates(_ argument: Dump.Argument) -> [String] {
        var values: [String] = []
        if let value = argument.defaultValue, !value.isEmpty { values.append(value) }
        switch argument.valueName ?? "" {
        case "size": values.append("64M")
        case "duration", "days": values.append("90s")
        default: break
        }
        return values + [
            "7", "/var/lib/walship-sample", "127.0.0.1:7999", "http://127.0.0.1:7999", "send", "degrade-after=30s",
            "0/3000060", "2026-11-23 10:15:00+00", "dr=7301", "s3://bucket/prefix", "http://127.0.0.1:9",
        ]
    }

    /// The TOML spelling of `value`: a number stays a number.
    static func toml(_ value: String) -> String { Int(value) != nil || Double(value) != nil ? value : "\"\(value)\"" }

    /// What parsing `arguments` gives: the parsed command's description, or the error's message.
    static func outcome(_ arguments: [String]) -> String {
        do {
            return "parsed \(String(describing: try Walship.parseAsRoot(arguments)))"
        } catch {
            return "failed \(Walship.fullMessage(for: error))"
        }
    }

    @Test(arguments: roles)
    func everyOptionReadsTheSameFromTheFileAsFromTheCommandLine(role: String) throws {
        let command = try Self.command(role)
        let dump = try JSONDecoder().decode(Dump.self, from: Data(command._dumpHelp().utf8))
        let specs = try #require(WalshipConfiguration.schema.roles[role])
        let base = try #require(Self.baseArguments[role], "no base arguments for walship \(role)")
        #expect(Self.outcome([role] + base).hasPrefix("parsed"), "walship \(role) \(base): \(Self.outcome([role] + base))")
        var parsed = 0
        var unparsed: [String] = []
        for argument in dump.command.arguments ?? [] where argument.kind != "positional" {
            guard let long = argument.names?.first(where: { $0.kind == "long" })?.name else { continue }
            guard let spec = specs.first(where: { $0.name == long }) else {
                #expect(
                    OptionSchema.notConfigurable.contains(long) || OptionSchema.commandLineOnly.contains(long),
                    "walship \(role) --\(long) cannot be set in the configuration file")
                continue
            }
            // The option under test comes only from where the test puts it (the command line would win over the file).
            var base = base
            // Options that exclude it go too: which of them wins is the exclusion's rule, tested on its own.
            let excluded = WalshipConfiguration.schema.exclusions.flatMap { group in
                group.contains { $0.contains(long) } ? group.filter { !$0.contains(long) }.flatMap { $0 } : []
            }
            for name in [long] + excluded {
                if let index = base.firstIndex(of: "--\(name)") { base.removeSubrange(index...index + 1) }
            }
            base += Self.partners(role, long)
            let commandLine: [String]
            let toml: String
            switch spec.kind {
            case .flag:
                commandLine = ["--\(long)"]
                toml = "\(long) = true"
            case .option, .repeating:
                let value =
                    Self.candidates(argument).first {
                        Self.outcome([role] + base + ["--\(long)", $0]).hasPrefix("parsed")
                    } ?? Self.candidates(argument)[0]
                commandLine = ["--\(long)", value]
                toml = spec.kind == .repeating ? "\(long) = [\(Self.toml(value))]" : "\(long) = \(Self.toml(value))"
            }
            let path = NSTemporaryDirectory() + "walship-roundtrip-\(UUID().uuidString).toml"
            defer { unlink(path) }
            try Data("[\(role)]\n\(toml)\n".utf8).write(to: URL(fileURLWithPath: path))
            let expanded = try WalshipConfiguration.expand(
                role: role, arguments: base + ["--config", path], environment: [:])
            let fromFile = Self.outcome([role] + expanded.arguments)
            let fromCommandLine = Self.outcome([role] + base + ["--config", path] + commandLine)
            #expect(fromFile == fromCommandLine, "walship \(role): \(toml)")
            if fromFile.hasPrefix("parsed") { parsed += 1 } else { unparsed.append("\(toml): \(fromFile)") }
        }
        // An option may be refused alone (--standby needs --primary-conninfo): both sides must then fail alike. Most
        // must parse, so most comparisons are between two parsed commands.
        #expect(parsed >= 3, "walship \(role): \(parsed) parsed")
        #expect(unparsed.count * 3 <= parsed, "walship \(role): \(parsed) parsed; refused: \(unparsed)")
    }
}
