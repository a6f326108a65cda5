import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The configuration file and `walship check` against real processes: check passes against a running
/// primary, receiver and sender over mutual TLS without disturbing them, fails clearly on each kind of
/// mistake, and `walship send --config` streams with the precedence flags > environment > file shown by
/// what the primary sees.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct ConfigCheckTests {
    func certs(_ fixture: Fixture, _ name: String) throws -> String {
        let directory = fixture.directory + "/" + name
        try run(IT.walshipBinary, ["certs", "init", directory, "--receiver-name", "127.0.0.1", "--sender-name", "pg-main"])
        // The receiver may run as the postgres OS user (a later check does): it must read its files.
        if IT.isRoot { try run("/bin/chown", ["-R", "postgres:postgres", directory]) }
        return directory
    }

    /// Writes a configuration file readable by the postgres OS user; returns its path.
    func write(_ fixture: Fixture, _ name: String, _ text: String) throws -> String {
        let path = fixture.directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        if IT.isRoot { try run("/bin/chown", ["postgres:postgres", path]) }
        return path
    }

    func senderConfig(
        _ topology: ShipTopology, certs: String, ca: String? = nil, slot: String, createSlot: Bool = false,
        to: String? = nil, extra: String = ""
    ) -> String {
        """
        # test configuration
        tls-ca = "\(ca ?? certs)/ca.crt"
        link-timeout = 10

        [send]
        source = "\(topology.primary.conninfo)"
        to = "\(to ?? "127.0.0.1:\(topology.receiverPort)")"
        slot = "\(slot)"
        create-slot = \(createSlot)
        tls-cert = "\(certs)/sender.crt"
        tls-key = "\(certs)/sender.key"
        \(extra)
        """
    }

    func check(_ arguments: [String], environment: [String: String] = [:], asPostgres: Bool = false) throws -> CommandResult {
        try run(
            IT.walshipBinary, ["check"] + arguments, asPostgres: asPostgres, timeout: 90, environment: environment, check: false)
    }

    func lines(_ result: CommandResult, _ level: String) -> [String] {
        result.output.split(separator: "\n").map(String.init).filter { $0.hasPrefix(level + "  ") }
    }

    @Test func checkPassesAgainstRunningProcessesAndLeavesThemAlone() throws {
        let fixture = try Fixture("config-check")
        defer { fixture.tearDown() }
        let good = try certs(fixture, "good")
        var topology = try ShipTopology(fixture)
        topology.linkArguments = { tlsArguments(good, $0) }
        try topology.startReceiver()
        try topology.startSender()
        let before = try topology.primary.sql("SELECT pid FROM pg_stat_replication WHERE application_name = 'walship'")

        let sendFile = try write(fixture, "send.toml", senderConfig(topology, certs: good, slot: "walship_it"))
        let send = try check(["--config", sendFile])
        #expect(send.status == 0, "\(send.output)\(send.error)")
        #expect(lines(send, "FAIL").isEmpty, "\(send.output)")
        for expected in [
            "ok    configuration: \(sendFile) gives walship send", "ok    certificates: tls-key",
            "ok    certificates: tls-cert is signed by tls-ca",
            "ok    source: ", "PostgreSQL 15.", "system \(topology.systemIdentifier)",
            "ok    slot: physical slot \"walship_it\" present",
            "ok    receiver: 127.0.0.1:\(topology.receiverPort) answered the handshake over mutual TLS", "its spool resumes at",
            "clock: the primary is", "clock: the receiver is",
            "ok    synchronous: asynchronous shipping; synchronous_standby_names (empty) does not name \"walship\"",
        ] {
            #expect(send.output.contains(expected), "missing \"\(expected)\" in:\n\(send.output)")
        }
        // sync = true is held against the primary's synchronous_standby_names, both ways round.
        let syncFile = try write(
            fixture, "send-sync.toml", senderConfig(topology, certs: good, slot: "walship_it", extra: "sync = true"))
        let unnamed = try check(["--config", syncFile])
        #expect(unnamed.status != 0, "\(unnamed.output)\(unnamed.error)")
        #expect(
            unnamed.output.contains(
                "FAIL  synchronous: sync = true, but synchronous_standby_names (empty) does not name \"walship\": commits will not wait"
            ), "\(unnamed.output)")
        #expect(unnamed.output.contains("ok    pg_monitor: role postgres can read"), "\(unnamed.output)")
        try topology.primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'walship'")
        try topology.primary.sql("SELECT pg_reload_conf()")
        try waitUntil("the primary to name walship as its synchronous standby", timeout: 30) {
            (
                try topology.primary.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walship'")
                    == "sync", ""
            )
        }
        let named = try check(["--config", syncFile])
        #expect(
            named.output.contains("ok    synchronous: synchronous_standby_names ('walship') names \"walship\": commits wait"),
            "\(named.output)")
        #expect(named.output.contains("(sync_state sync)"), "\(named.output)")
        // A role that cannot read sync_state: the mode history would prove nothing.
        try topology.primary.sql("CREATE ROLE walship_plain REPLICATION LOGIN")
        let plainFile = try write(
            fixture, "send-plain.toml",
            senderConfig(topology, certs: good, slot: "walship_it").replacingOccurrences(
                of: "user=postgres", with: "user=walship_plain"))
        let plain = try check(["--config", plainFile])
        #expect(plain.status != 0, "\(plain.output)\(plain.error)")
        #expect(
            plain.output.contains("FAIL  pg_monitor: role walship_plain is not a member of pg_monitor")
                && plain.output.contains("GRANT pg_monitor TO walship_plain;"), "\(plain.output)")
        let asynchronous = try check(["--config", sendFile])
        #expect(
            asynchronous.output.contains(
                "WARN  synchronous: synchronous_standby_names ('walship') names \"walship\", but sync = false"),
            "\(asynchronous.output)")
        try topology.primary.sql("ALTER SYSTEM RESET synchronous_standby_names")
        try topology.primary.sql("SELECT pg_reload_conf()")
        // The running sender was not disturbed: same walsender, still streaming, and WAL still arrives.
        #expect(try topology.primary.sql("SELECT pid FROM pg_stat_replication WHERE application_name = 'walship'") == before)
        try topology.primary.sql("CREATE TABLE after_check AS SELECT g FROM generate_series(1, 1000) g")
        let target = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("WAL after the check to be durable", timeout: 60) { (try topology.durable() >= target, "") }
        #expect(topology.sender!.isRunning)
        // The probe's application name is not left behind on the primary.
        #expect(
            try topology.primary.sql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship check'") == "0")

        // The receiver's side, against the receiver that runs: its ports are held by it, and that is fine.
        let spoolBefore = try FileManager.default.contentsOfDirectory(atPath: topology.spool).sorted()
        let receiveFile = try write(
            fixture, "receive.toml",
            """
            tls-ca = "\(good)/ca.crt"
            [receive]
            listen = "127.0.0.1:\(topology.receiverPort)"
            spool = "\(topology.spool)"
            status-listen = "127.0.0.1:\(topology.receiverStatusPort)"
            tls-cert = "\(good)/receiver.crt"
            tls-key = "\(good)/receiver.key"
            """)
        let receive = try check(["--config", receiveFile])
        #expect(receive.status == 0, "\(receive.output)\(receive.error)")
        #expect(
            receive.output.contains(
                "ok    spool: \(topology.spool) is writable and fsyncs (systems \(topology.systemIdentifier)"),
            "\(receive.output)")
        #expect(
            receive.output.contains("ok    listen: 127.0.0.1:\(topology.receiverPort) is in use by the running walship receive"),
            "\(receive.output)")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: topology.spool).sorted() == spoolBefore,
            "the check left a file in the spool")

        // One file with both tables needs --role; WALSHIP_CONFIG names the file when --config does not.
        let both = try write(
            fixture, "both.toml",
            try String(contentsOfFile: sendFile, encoding: .utf8) + "\n[receive]\nlisten = \"127.0.0.1:1\"\nspool = \"/tmp\"\n")
        let ambiguous = try check([], environment: ["WALSHIP_CONFIG": both])
        #expect(
            ambiguous.status == 1 && ambiguous.output.contains("configures receive and send (hint: pass --role"),
            "\(ambiguous.output)")
        let chosen = try check(["--role", "send"], environment: ["WALSHIP_CONFIG": both])
        #expect(chosen.status == 0, "\(chosen.output)")
        // A site's file also holds [switchover], which configures no daemon: check still finds the one daemon table,
        // and --strict fails exactly when a line warns.
        let site = try write(
            fixture, "site.toml",
            try String(contentsOfFile: receiveFile, encoding: .utf8)
                + "\n[switchover]\npgdata = \"/var/lib/postgresql/15/main\"\n")
        let siteCheck = try check(["--config", site])
        #expect(siteCheck.status == 0, "\(siteCheck.output)")
        #expect(siteCheck.output.contains("gives walship receive"), "\(siteCheck.output)")
        let strict = try check(["--config", site, "--strict"])
        #expect(strict.status == (siteCheck.output.contains("WARN  ") ? 1 : 0), "\(strict.output)")
        #expect(try check(["--config", site, "--role", "switchover"]).status == 64)
        // The other commands read their own tables of the same file: walship status its [status] url.
        let withStatus = try write(
            fixture, "site-status.toml",
            try String(contentsOfFile: site, encoding: .utf8)
                + "\n[status]\nurl = \"http://127.0.0.1:\(topology.receiverStatusPort)\"\n")
        let status = try run(IT.walshipBinary, ["status", "--config", withStatus, "--json"], timeout: 30, check: false)
        #expect(
            (try? JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any])?["role"] as? String
                == "receiver", "\(status.output)\(status.error)")
        #expect(try check(["--config", withStatus]).status == 0)
    }

    @Test func checkFailsClearlyOnEachMistake() throws {
        let fixture = try Fixture("config-check-fail")
        defer { fixture.tearDown() }
        let good = try certs(fixture, "good")
        let foreign = try certs(fixture, "foreign")
        var topology = try ShipTopology(fixture)
        topology.linkArguments = { tlsArguments(good, $0) }
        try topology.startReceiver()

        // A slot that is missing, and send would not create.
        let missing = try check([
            "--config", try write(fixture, "missing-slot.toml", senderConfig(topology, certs: good, slot: "nosuch")),
        ])
        #expect(missing.status == 1, "\(missing.output)")
        #expect(
            lines(missing, "FAIL") == [
                "FAIL  slot: \"nosuch\" does not exist on the primary (hint: set create-slot = true, or run SELECT pg_create_physical_replication_slot('nosuch', true);)"
            ], "\(missing.output)")
        // With create-slot it passes, and the check does not create it.
        let creatable = try check([
            "--config",
            try write(fixture, "create-slot.toml", senderConfig(topology, certs: good, slot: "nosuch", createSlot: true)),
        ])
        #expect(creatable.status == 0 && creatable.output.contains("walship send creates it"), "\(creatable.output)")
        #expect(try topology.primary.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'nosuch'") == "0")

        // A sender of a site that runs both ends: without its site's spool, a warning; with one that is not there, a
        // failure.
        let noSiteSpool = try check([
            "--config",
            try write(
                fixture, "standby-wait.toml",
                senderConfig(topology, certs: good, slot: "nosuch", createSlot: true, extra: "standby-wait = true")),
        ])
        #expect(
            noSiteSpool.status == 0
                && noSiteSpool.output.contains(
                    "WARN  site spool: none: switching back, this sender asks pg_wal for what the other site wrote meanwhile"),
            "\(noSiteSpool.output)")
        let absentSiteSpool = try check([
            "--config",
            try write(
                fixture, "site-spool.toml",
                senderConfig(
                    topology, certs: good, slot: "nosuch", createSlot: true,
                    extra: "standby-wait = true\nsite-spool = \"\(fixture.directory)/no-such-spool\"")),
        ])
        #expect(
            absentSiteSpool.status == 1
                && lines(absentSiteSpool, "FAIL") == [
                    "FAIL  site spool: \(fixture.directory)/no-such-spool is not a readable directory (hint: site-spool names this site's walship receive --spool)"
                ], "\(absentSiteSpool.output)")

        // Nothing listens on the receiver port.
        let closedPort = IT.freePort()
        let wrongPort = try check([
            "--config",
            try write(
                fixture, "wrong-port.toml",
                senderConfig(
                    topology, certs: good, slot: "nosuch", createSlot: true,
                    to: "127.0.0.1:\(closedPort)")),
        ])
        #expect(wrongPort.status == 1, "\(wrongPort.output)")
        let portFailure = lines(wrongPort, "FAIL")
        #expect(
            portFailure.count == 1
                && portFailure[0].hasPrefix(
                    "FAIL  receiver: 127.0.0.1:\(closedPort): receiver 127.0.0.1:\(closedPort) is unreachable")
                && portFailure[0].contains("hint: is walship receive running there"), "\(wrongPort.output)")

        // A whole certificate set from another CA: each file is fine, the receiver refuses it.
        let otherCA = try check([
            "--config",
            try write(fixture, "foreign.toml", senderConfig(topology, certs: foreign, slot: "nosuch", createSlot: true)),
        ])
        #expect(otherCA.status == 1, "\(otherCA.output)")
        #expect(
            lines(otherCA, "FAIL").count == 1
                && otherCA.output.contains("FAIL  receiver: 127.0.0.1:\(topology.receiverPort): TLS with the receiver failed"),
            "\(otherCA.output)")
        // Our certificate with a CA that did not sign it: found before any connection.
        let mixed = try check([
            "--config",
            try write(fixture, "mixed.toml", senderConfig(topology, certs: good, ca: foreign, slot: "nosuch", createSlot: true)),
        ])
        #expect(
            mixed.status == 1
                && mixed.output.contains(
                    "FAIL  certificates: tls-cert \(good)/sender.crt is not signed by tls-ca \(foreign)/ca.crt"),
            "\(mixed.output)")

        // A spool this user cannot write (as root, checked as the postgres OS user the receiver runs as).
        let locked = fixture.directory + "/locked-spool"
        try FileManager.default.createDirectory(
            atPath: locked, withIntermediateDirectories: true, attributes: [.posixPermissions: IT.isRoot ? 0o755 : 0o555])
        defer { chmod(locked, 0o755) }
        let receiveFile = try write(
            fixture, "locked.toml",
            """
            insecure = true
            [receive]
            listen = "127.0.0.1:\(IT.freePort())"
            spool = "\(locked)"
            """)
        let unwritable = try check(["--config", receiveFile], asPostgres: IT.isRoot)
        #expect(unwritable.status == 1, "\(unwritable.output)\(unwritable.error)")
        #expect(
            unwritable.output.contains("FAIL  spool: \(locked) is not writable for this user: Permission denied"),
            "\(unwritable.output)")
        #expect(unwritable.output.contains("WARN  certificates: none"), "\(unwritable.output)")

        // The configuration itself: an unknown key, with the nearest one as hint, and a bad value traced to its source.
        let typo = try check([
            "--config",
            try write(fixture, "typo.toml", senderConfig(topology, certs: good, slot: "walship_it", extra: "slott = \"x\"")),
        ])
        #expect(
            typo.status == 1
                && typo.output.contains(
                    "FAIL  configuration: \(fixture.directory)/typo.toml: [send] has an unknown key slott (hint: did you mean slot?"
                ),
            "\(typo.output)")
        let badValue = try check(
            ["--config", try write(fixture, "bad.toml", senderConfig(topology, certs: good, slot: "walship_it"))],
            environment: ["WALSHIP_LINK_TIMEOUT": "soon"])
        #expect(
            badValue.status == 1 && badValue.output.contains("--link-timeout")
                && badValue.output.contains("note: --link-timeout came from the environment variable WALSHIP_LINK_TIMEOUT"),
            "\(badValue.output)")
    }

    @Test func sendWithConfigStreamsWithFlagsOverEnvironmentOverFile() throws {
        let fixture = try Fixture("config-send")
        defer { fixture.tearDown() }
        let good = try certs(fixture, "good")
        var topology = try ShipTopology(fixture)
        topology.linkArguments = { tlsArguments(good, $0) }
        try topology.startReceiver()
        let file = try write(
            fixture, "walship.toml",
            senderConfig(
                topology, certs: good, slot: "from_file", createSlot: true,
                extra: """
                    application-name = "name_from_file"
                    status-listen = "127.0.0.1:\(topology.senderStatusPort)"
                    retry-max-seconds = 2
                    """))
        // The slot comes from the environment over the file; the application name from the flag over both.
        topology.sender = try fixture.walship(
            "sender", ["send", "--config", file, "--application-name", "name_from_flag"],
            environment: ["WALSHIP_SLOT": "from_env", "WALSHIP_APPLICATION_NAME": "name_from_env"])
        try topology.waitUntilStreaming()
        #expect(
            try topology.primary.sql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots")
                == "from_env")
        #expect(try topology.primary.sql("SELECT string_agg(application_name, ',') FROM pg_stat_replication") == "name_from_flag")
        try topology.primary.sql("CREATE TABLE shipped AS SELECT g FROM generate_series(1, 1000) g")
        let target = try lsn(topology.primary.sql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("WAL from a configured sender to be durable", timeout: 60) { (try topology.durable() >= target, "") }

        // A bad file stops the command before it starts, naming key and file.
        let bad = try write(fixture, "bad.toml", "[send]\nslot = \"s\"\ntls-certt = \"x\"\n")
        let refused = try run(IT.walshipBinary, ["send", "--config", bad], timeout: 30, check: false)
        #expect(
            refused.status != 0
                && refused.error.contains("\(bad): [send] has an unknown key tls-certt (hint: did you mean tls-cert?"),
            "\(refused.error)")
    }
}
