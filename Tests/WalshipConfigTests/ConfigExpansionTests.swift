import ArgumentParser
import WALCore
import XCTest

@testable import WalshipConfig

/// A stand-in for `walship send`: the same kinds of options, parsed by the same library.
struct FakeSend: ParsableCommand {
    @Option var source: String
    @Option var slot: String
    @Option var to: String = "127.0.0.1:7000"
    @Flag var createSlot = false
    @Flag var sync = false
    @Flag var insecure = false
    @Option var tlsCert: String?
    @Option var tlsKey: String?
    @Option(name: .customLong("tls-ca")) var tlsCA: String?
    @Option var linkTimeout = 30
    @Option var alertCommand: String?
    @Option var config: String?

    func validate() throws {
        if insecure && tlsCert != nil { throw ValidationError("--insecure and --tls-cert exclude each other") }
    }
}

struct FakeReceive: ParsableCommand {
    @Option var listen: String
    @Flag var force = false
    @Option(help: ArgumentHelp("", valueName: "size")) var spoolMaxBytes: ByteSize?
    @Option(help: ArgumentHelp("", valueName: "duration")) var alertLagSeconds: TimeSpan?
    @Option var allowSource: [String] = []
    @Flag var insecure = false
    @Option var tlsCert: String?
    @Option var tlsKey: String?
    @Option(name: .customLong("tls-ca")) var tlsCA: String?
    @Option var linkTimeout = 30
    @Option var config: String?
}

/// A stand-in for `walship switchover`: reads the same file, shares none of the daemons' common options.
struct FakeSwitchover: ParsableCommand {
    @Option var pgdata: String
    @Option var timeout = 120
    @Option var config: String?
}

final class ConfigExpansionTests: XCTestCase {
    let schema = ConfigSchema(
        roles: ["send": OptionSchema.options(of: FakeSend.self), "receive": OptionSchema.options(of: FakeReceive.self)],
        exclusions: [[["insecure"], ["tls-cert", "tls-key", "tls-ca"]]],
        secrets: ["source"])

    func file(_ text: String) throws -> ConfigFile { try ConfigFile.parse(text, path: "/etc/walship/walship.toml") }

    func expand(
        _ arguments: [String] = [], _ text: String?, environment: [String: String] = [:], role: String = "send"
    ) throws -> Expansion {
        try Layering.expand(
            arguments: arguments, role: role, schema: schema, file: text.map { try file($0) }, environment: environment)
    }

    func send(_ arguments: [String] = [], _ text: String?, environment: [String: String] = [:]) throws -> FakeSend {
        try FakeSend.parse(try expand(arguments, text, environment: environment).arguments)
    }

    func assertConfigError(
        _ body: @autoclosure () throws -> Any, contains parts: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let text = "\(error)"
            for part in parts { XCTAssert(text.contains(part), "\"\(text)\" lacks \"\(part)\"", file: file, line: line) }
        }
    }

    /// A command that reads the daemons' file without sharing their common options (walship switchover): the top
    /// level stays what both daemons share, and its own table is checked like theirs.
    func testACommandBesideTheDaemonsKeepsTheTopLevelTheirs() throws {
        var roles = schema.roles
        roles["switchover"] = OptionSchema.options(of: FakeSwitchover.self)
        let wider = ConfigSchema(
            roles: roles, exclusions: schema.exclusions, secrets: schema.secrets, sharedAcross: ["send", "receive"])
        let text = """
            tls-ca = "/etc/walship/ca.crt"
            [send]
            source = "host=db1"
            slot = "s"
            [receive]
            listen = "0.0.0.0:7000"
            [switchover]
            pgdata = "/var/lib/postgresql/15/main"
            timeout = 60
            """
        func expanded(_ role: String, _ text: String) throws -> [String] {
            try Layering.expand(arguments: [], role: role, schema: wider, file: try file(text), environment: [:]).arguments
        }
        let parsed = try FakeSwitchover.parse(try expanded("switchover", text))
        XCTAssertEqual(parsed.pgdata, "/var/lib/postgresql/15/main")
        XCTAssertEqual(parsed.timeout, 60)
        XCTAssertEqual(try FakeSend.parse(try expanded("send", text)).tlsCA, "/etc/walship/ca.crt")
        assertConfigError(try expanded("send", text + "\ntimout = 3\n"), contains: ["[switchover]", "timout", "timeout"])
    }

    func testSchemaComesFromTheCommandDefinition() {
        let specs = Dictionary(uniqueKeysWithValues: OptionSchema.options(of: FakeReceive.self).map { ($0.name, $0) })
        XCTAssertEqual(specs["listen"]?.kind, .option)
        XCTAssertEqual(specs["allow-source"]?.kind, .repeating)
        XCTAssertEqual(specs["insecure"]?.kind, .flag)
        XCTAssertNotNil(specs["tls-ca"])
        XCTAssertNil(specs["config"], "--config names the file; the file cannot name another")
        XCTAssertNil(specs["help"])
        XCTAssertEqual(specs["allow-source"]?.environmentName, "WALSHIP_ALLOW_SOURCE")
    }

    func testCommandLineBeatsEnvironmentBeatsFile() throws {
        let text = """
            [send]
            source = "host=db1"
            slot = "from_file"
            """
        XCTAssertEqual(try send([], text).slot, "from_file")
        XCTAssertEqual(try send([], text, environment: ["WALSHIP_SLOT": "from_env"]).slot, "from_env")
        XCTAssertEqual(try send(["--slot", "from_flag"], text, environment: ["WALSHIP_SLOT": "from_env"]).slot, "from_flag")
        XCTAssertEqual(try send(["--slot=from_flag"], text, environment: ["WALSHIP_SLOT": "from_env"]).slot, "from_flag")
        // An empty variable is unset, as systemd's environment files leave optional ones.
        XCTAssertEqual(try send([], text, environment: ["WALSHIP_SLOT": ""]).slot, "from_file")
        let expansion = try expand(["--slot", "x"], text, environment: ["WALSHIP_SOURCE": "host=db2"])
        XCTAssertEqual(expansion.origins["slot"], .commandLine)
        XCTAssertEqual(expansion.origins["source"], .environment("WALSHIP_SOURCE"))
        XCTAssertNil(expansion.origins["sync"])
    }

    func testTableBeatsTopLevel() throws {
        let text = """
            link-timeout = 20
            [send]
            source = "host=db1"
            slot = "s"
            link-timeout = 40
            [receive]
            listen = "0.0.0.0:7000"
            """
        XCTAssertEqual(try send([], text).linkTimeout, 40)
        let receive = try FakeReceive.parse(try expand([], text, role: "receive").arguments)
        XCTAssertEqual(receive.linkTimeout, 20)
    }

    func testFlagsArraysAndNumbers() throws {
        let text = """
            [send]
            source = "host=db1"
            slot = "s"
            sync = true
            create-slot = false
            link-timeout = 12.0
            alert-command = "-starts-with-a-dash"
            [receive]
            listen = "0.0.0.0:7000"
            allow-source = ["a=1", "b=2"]
            """
        let command = try send([], text)
        XCTAssertTrue(command.sync)
        XCTAssertFalse(command.createSlot)
        XCTAssertEqual(command.linkTimeout, 12)
        XCTAssertEqual(command.alertCommand, "-starts-with-a-dash")
        XCTAssertEqual(try FakeReceive.parse(try expand([], text, role: "receive").arguments).allowSource, ["a=1", "b=2"])
        // The environment replaces the whole list; a flag can be switched off there.
        let env = try FakeReceive.parse(
            try expand([], text, environment: ["WALSHIP_ALLOW_SOURCE": "c=3, d=4"], role: "receive").arguments)
        XCTAssertEqual(env.allowSource, ["c=3", "d=4"])
        XCTAssertFalse(try send([], text, environment: ["WALSHIP_SYNC": "no"]).sync)
        XCTAssertTrue(
            try send([], text.replacingOccurrences(of: "sync = true", with: ""), environment: ["WALSHIP_SYNC": "1"]).sync)
        assertConfigError(
            try send([], text, environment: ["WALSHIP_SYNC": "maybe"]), contains: ["WALSHIP_SYNC is a flag", "true or false"])
    }

    func testOptionsGoBeforeADoubleDash() throws {
        let expansion = try expand(["--slot", "s", "--", "rest"], "[send]\nsource = \"host=db1\"")
        XCTAssertEqual(expansion.arguments, ["--slot", "s", "--source=host=db1", "--", "rest"])
    }

    func testUnknownKeysNameTheKeyTheFileAndTheNearestKey() {
        assertConfigError(
            try expand([], "[send]\nslott = \"s\""),
            contains: ["/etc/walship/walship.toml", "[send]", "unknown key slott", "did you mean slot?"])
        assertConfigError(
            try expand([], "[send]\ntls_cert = \"/x\""), contains: ["unknown key tls_cert", "did you mean tls-cert?"])
        assertConfigError(try expand([], "[sned]\nslot = \"s\""), contains: ["unknown table [sned]", "did you mean [send]?"])
        assertConfigError(
            try expand([], "slot = \"s\""), contains: ["slot is an option of walship send only", "put it under [send]"])
        assertConfigError(try expand([], "frobnicate = 1"), contains: ["unknown key frobnicate"])
        // A typo in the other command's table is reported too.
        assertConfigError(
            try expand([], "[receive]\nlisten = \"x:1\"\nlisen = \"y\"", role: "send"),
            contains: ["[receive]", "lisen", "did you mean listen?"])
        // The key that names the file is not an option of the file.
        assertConfigError(try expand([], "[send]\nconfig = \"/other.toml\""), contains: ["unknown key config"])
    }

    func testTypeErrorsSayWhatWasExpected() {
        assertConfigError(
            try expand([], "[send]\nsync = \"yes\""), contains: ["[send] sync is a flag", "true or false, not a string"])
        assertConfigError(try expand([], "[send]\nslot = true"), contains: ["[send] slot takes a value", "not a boolean"])
        assertConfigError(
            try expand([], "[send]\nslot = [\"a\", \"b\"]"), contains: ["[send] slot takes one value, not an array"])
        assertConfigError(
            try expand([], "[send]\nslot = { name = \"a\" }"), contains: ["[send] slot must be a string or a number, not a table"]
        )
        assertConfigError(
            try expand([], "[receive]\nallow-source = [[\"a\"]]", role: "receive"),
            contains: ["every element must be a string or a number"])
        assertConfigError(
            try file("[send]\nslot = \"unterminated\n"), contains: ["/etc/walship/walship.toml:2:", "not valid TOML"])
    }

    func testAValueTheCommandRejectsIsTracedToItsSource() throws {
        let expansion = try expand([], "[send]\nsource = \"host=db1\"\nslot = \"s\"\nlink-timeout = \"soon\"")
        XCTAssertThrowsError(try FakeSend.parse(expansion.arguments)) { error in
            let message = expansion.annotate(FakeSend.fullMessage(for: error))
            XCTAssert(message.contains("--link-timeout"), message)
            XCTAssert(message.contains("note: --link-timeout came from /etc/walship/walship.toml [send]"), message)
        }
    }

    func testSecretsNeverAppearInErrors() throws {
        let secret = "host=db1 password=hunter2"
        let expansion = try expand([], "[send]\nsource = \"\(secret)\"\nslot = \"s\"")
        XCTAssertEqual(expansion.secretValues, [secret])
        let message = expansion.annotate("Error: The value '\(secret)' is invalid for '--source <source>'")
        XCTAssertFalse(message.contains("hunter2"), message)
        XCTAssert(message.contains("note: --source came from"), message)
        // Given on the command line, it is hidden as well.
        let flagged = try expand(["--source", secret], "[send]\nslot = \"s\"")
        XCTAssertFalse(flagged.annotate("bad value \(secret)").contains("hunter2"))
        // Errors about the file never quote values.
        assertConfigError(try expand([], "[send]\nsourcee = \"\(secret)\""), contains: ["unknown key sourcee"])
        XCTAssertThrowsError(try expand([], "[send]\nsourcee = \"\(secret)\"")) { XCTAssertFalse("\($0)".contains("hunter2")) }
    }

    func testInsecureOnTheCommandLineOverridesTLSFilesFromTheFile() throws {
        let text = """
            [send]
            source = "host=db1"
            slot = "s"
            tls-cert = "/etc/walship/sender.crt"
            tls-key = "/etc/walship/sender.key"
            tls-ca = "/etc/walship/ca.crt"
            """
        let plain = try send(["--insecure"], text)
        XCTAssertTrue(plain.insecure)
        XCTAssertNil(plain.tlsCert)
        XCTAssertEqual(try send([], text).tlsCert, "/etc/walship/sender.crt")
        // And TLS files on the command line override insecure from the environment.
        let tls = try send(
            ["--tls-cert", "/a", "--tls-key", "/b", "--tls-ca", "/c"], "[send]\nsource = \"x\"\nslot = \"s\"",
            environment: ["WALSHIP_INSECURE": "true"])
        XCTAssertFalse(tls.insecure)
        // Contradictions within one layer are left to the command's own validation.
        XCTAssertThrowsError(try send([], text + "\ninsecure = true"))
    }

    func testWithoutAFileTheEnvironmentAloneWorks() throws {
        let command = try send(
            [], nil, environment: ["WALSHIP_SOURCE": "host=db1", "WALSHIP_SLOT": "s", "WALSHIP_BIN": "/unrelated"])
        XCTAssertEqual(command.slot, "s")
    }

    func testForceIsNeverTakenFromTheFileOrTheEnvironment() throws {
        XCTAssertFalse(OptionSchema.options(of: FakeReceive.self).map(\.name).contains("force"))
        assertConfigError(
            try expand([], "[receive]\nlisten = \"0.0.0.0:7000\"\nforce = true", role: "receive"),
            contains: ["/etc/walship/walship.toml [receive] sets force", "only from the command line", "delete force"])
        assertConfigError(
            try expand([], "listen = \"0.0.0.0:7000\"\nforce = true", role: "receive"),
            contains: ["sets force", "only from the command line"])
        assertConfigError(
            try expand(["--listen", "0.0.0.0:7000"], nil, environment: ["WALSHIP_FORCE": "1"], role: "receive"),
            contains: ["WALSHIP_FORCE sets force", "unset WALSHIP_FORCE"])
        // On the command line it still works.
        let typed = try expand(["--listen", "0.0.0.0:7000", "--force"], nil, role: "receive")
        XCTAssertTrue(try FakeReceive.parse(typed.arguments).force)
    }

    func receive(_ arguments: [String] = [], _ text: String?, environment: [String: String] = [:]) throws -> FakeReceive {
        try FakeReceive.parse(try expand(arguments, text, environment: environment, role: "receive").arguments)
    }

    func testSizesAndDurationsFromTheFileTheEnvironmentAndTheCommandLine() throws {
        let table = "[receive]\nlisten = \"0.0.0.0:7000\"\n"
        // A TOML integer keeps its plain meaning (bytes, seconds); a string may carry a unit.
        XCTAssertEqual(try receive([], table + "spool-max-bytes = 10737418240").spoolMaxBytes, ByteSize(bytes: 10 << 30))
        XCTAssertEqual(try receive([], table + "spool-max-bytes = \"10G\"").spoolMaxBytes, ByteSize(bytes: 10 << 30))
        XCTAssertEqual(try receive([], table + "alert-lag-seconds = 90").alertLagSeconds, TimeSpan(seconds: 90))
        XCTAssertEqual(try receive([], table + "alert-lag-seconds = \"5m\"").alertLagSeconds, TimeSpan(seconds: 300))
        XCTAssertEqual(try receive([], table + "alert-lag-seconds = 1.5").alertLagSeconds, TimeSpan(seconds: 1.5))
        // The environment beats the file, the command line beats both.
        let environment = ["WALSHIP_SPOOL_MAX_BYTES": "512M"]
        XCTAssertEqual(
            try receive([], table + "spool-max-bytes = \"10G\"", environment: environment).spoolMaxBytes,
            ByteSize(bytes: 512 << 20))
        XCTAssertEqual(
            try receive(["--spool-max-bytes", "1T"], table + "spool-max-bytes = \"10G\"", environment: environment)
                .spoolMaxBytes, ByteSize(bytes: 1 << 40))
    }

    func testABadSizeNamesTheOptionItsSourceAndTheNearestValidForm() throws {
        let expansion = try expand(
            [], "[receive]\nlisten = \"0.0.0.0:7000\"\nspool-max-bytes = \"10GB\"", role: "receive")
        XCTAssertThrowsError(try FakeReceive.parse(expansion.arguments)) { error in
            let message = expansion.annotate(UnitArguments.explain(FakeReceive.fullMessage(for: error)))
            XCTAssert(message.contains("'--spool-max-bytes <size>'"), message)
            XCTAssert(message.contains("did you mean 10G?"), message)
            XCTAssert(message.contains("powers of 1024"), message)
            XCTAssert(message.contains("note: --spool-max-bytes came from /etc/walship/walship.toml [receive]"), message)
        }
        XCTAssertThrowsError(
            try FakeReceive.parse(["--listen", "0.0.0.0:7000", "--alert-lag-seconds", "5 minutes"])
        ) { error in
            let message = UnitArguments.explain(FakeReceive.fullMessage(for: error))
            XCTAssert(message.contains("'--alert-lag-seconds <duration>': not a duration"), message)
            XCTAssert(message.contains("did you mean 5m?"), message)
        }
        // Other messages pass unchanged.
        XCTAssertEqual(
            UnitArguments.explain("Missing expected argument '--listen <listen>'"),
            "Missing expected argument '--listen <listen>'")
    }

    func testNearestKey() {
        XCTAssertEqual(nearest("slott", in: ["slot", "sync", "source"]), "slot")
        XCTAssertEqual(nearest("status_listen", in: ["status-listen", "listen"]), "status-listen")
        XCTAssertNil(nearest("completely-different", in: ["slot", "sync"]))
    }
}
