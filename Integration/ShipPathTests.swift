import Foundation
import Testing

/// The ship path against real PostgreSQL 15: primary → walship send → walship receive → spool.
struct ShipTopology {
    let fixture: Fixture
    let primary: Cluster
    let archive: String
    let spool: String
    let receiverPort = IT.freePort()
    let receiverStatusPort = IT.freePort()
    let senderStatusPort = IT.freePort()
    let systemIdentifier: String
    var receiver: Daemon?
    var sender: Daemon?
    var senderArguments: [String] = []
    var receiverExtra: [String] = []
    /// Extra environment of the receiver (a storage fault control file).
    var receiverEnvironment: [String: String] = [:]
    /// Where the sender connects, when not straight to the receiver (a fault proxy).
    var senderTargetPort: Int?
    /// The link's security arguments for one end ("receiver" or "sender"): mutual TLS, as deployed, with a
    /// certificate set made for this fixture by `walship certs init`.
    var linkArguments: (String) -> [String]
    let certificates: String

    /// The receiver runs as the postgres OS user when `spoolOwnedByPostgres`, as a DR site that serves
    /// restore_command does, so PostgreSQL can read the spool.
    let receiverAsPostgres: Bool

    init(_ fixture: Fixture, primarySettings: [String: String] = [:], spoolOwnedByPostgres: Bool = false) throws {
        self.fixture = fixture
        archive = try fixture.postgresDirectory("archive")
        spool = spoolOwnedByPostgres ? try fixture.postgresDirectory("spool") : fixture.directory + "/spool"
        receiverAsPostgres = spoolOwnedByPostgres && IT.isRoot
        var settings = ["archive_mode": "on", "archive_command": "'cp %p \(archive)/%f'"]
        settings.merge(primarySettings) { $1 }
        certificates = fixture.directory + "/certs"
        if !FileManager.default.fileExists(atPath: certificates + "/ca.crt") {
            _ = try run(IT.walshipBinary, ["certs", "init", certificates, "--receiver-name", "127.0.0.1"])
            // Readable by a receiver that runs as the postgres OS user.
            if IT.isRoot { _ = try run("/bin/chown", ["-R", "postgres:postgres", certificates]) }
        }
        linkArguments = { [certificates] in tlsArguments(certificates, $0) }
        primary = try fixture.cluster("primary", settings: settings)
        try primary.start()
        systemIdentifier = try primary.sql("SELECT system_identifier FROM pg_control_system()")
    }

    mutating func startReceiver(linkTimeout: Int = 10) throws {
        let arguments =
            [
                "receive", "--listen", "127.0.0.1:\(receiverPort)", "--spool", spool,
            ] + linkArguments("receiver") + [
                "--status-listen", "127.0.0.1:\(receiverStatusPort)", "--link-timeout", "\(linkTimeout)",
            ] + receiverExtra
        receiver =
            receiverAsPostgres
            ? try fixture.daemon(
                "receiver", "/usr/bin/setpriv",
                ["--reuid=postgres", "--regid=postgres", "--init-groups", "--", IT.walshipBinary] + arguments)
            : try fixture.walship("receiver", arguments, environment: receiverEnvironment)
        try waitUntil("the receiver's status endpoint", timeout: 30) {
            (((try? fetchStatus(port: receiverStatusPort)) != nil), receiver!.log)
        }
    }

    mutating func startSender(extra: [String] = [], slot: String = "walship_it", source: String? = nil) throws {
        senderArguments =
            [
                "send", "--source", source ?? primary.conninfo, "--to", "127.0.0.1:\(senderTargetPort ?? receiverPort)", "--slot",
                slot,
                "--create-slot", "--status-listen", "127.0.0.1:\(senderStatusPort)", "--link-timeout", "10",
                "--retry-max-seconds", "2", "--slot-check-interval", "2",
            ] + linkArguments("sender") + extra
        sender = try fixture.walship("sender", senderArguments)
        try waitUntilStreaming()
    }

    func waitUntilStreaming() throws {
        try waitUntil("the sender to stream", timeout: 60) {
            let state = (try? fetchStatus(port: senderStatusPort))?["state"] as? String
            return (state == "streaming", "state=\(state ?? "nil")\n\(sender?.log.suffix(2000) ?? "")")
        }
    }

    /// The receiver's durable end for this primary's system.
    func durable() throws -> UInt64 {
        let status = try fetchStatus(port: receiverStatusPort)
        let id = systemIdentifier
        guard let systems = status["systems"] as? [[String: Any]],
            let mine = systems.first(where: { $0["systemIdentifier"] as? String == id }),
            let value = stageLSN(mine, "durable")
        else { return 0 }
        return value
    }

    var walDirectory: String { spool + "/" + systemIdentifier + "/wal" }

    /// A base backup of the primary through the link into the spool (`walship backup`); returns its id.
    @discardableResult
    func takeBackup() throws -> String {
        let backup = try run(
            IT.walshipBinary,
            ["backup", "--source", primary.conninfo, "--to", "127.0.0.1:\(receiverPort)"] + linkArguments("sender"),
            timeout: 300, check: false)
        guard backup.status == 0 else { throw TestFailure("walship backup failed: \(backup.error)") }
        let line = backup.output.split(separator: "\n").last { $0.hasPrefix("backup ") && $0.contains(" complete:") } ?? ""
        return String(line.split(separator: " ").dropFirst().first ?? "")
    }

    /// The DR standby: restored from the spool's newest backup, streaming from the receiver's standby endpoint on
    /// `standbyPort` (which `receiverExtra` must give it) as `dr_replica`.
    func startDRStandby(standbyPort: Int, name: String = "dr") throws -> Cluster {
        _ = try run(
            IT.walshipBinary,
            [
                "restore", "--spool", spool, "--pgdata", fixture.directory + "/" + name, "--standby",
                "--primary-conninfo", "host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr_replica",
            ])
        return try fixture.startCopy(
            name: name, signal: "standby.signal", settings: ["hot_standby = on", "wal_retrieve_retry_interval = '1s'"])
    }

    /// Switches WAL and waits until the switched segment is completed in the spool; returns its name.
    @discardableResult
    func switchAndWait() throws -> String {
        let name = try primary.sql("SELECT pg_walfile_name(pg_switch_wal())")
        try waitUntil("segment \(name) to be completed in the spool", timeout: 120) {
            (
                FileManager.default.fileExists(atPath: walDirectory + "/\(name).lz4"),
                "durable=\((try? durable()).map { String($0, radix: 16) } ?? "?")"
            )
        }
        return name
    }

    /// Every completed segment decompresses (with the lz4 tool) to the primary's archived copy, the
    /// segment numbers have no gap, and pg_waldump reads the whole range. Returns how many segments.
    func verifySpool(through last: String) throws -> Int {
        let names = try FileManager.default.contentsOfDirectory(atPath: walDirectory)
            .filter { $0.hasSuffix(".lz4") }.map { String($0.dropLast(4)) }.sorted()
        #expect(!names.isEmpty)
        let plain = fixture.directory + "/plain"
        try FileManager.default.createDirectory(atPath: plain, withIntermediateDirectories: true)
        var previous: UInt64?
        for name in names {
            let number = UInt64(name.suffix(16).prefix(8), radix: 16)! * 256 + UInt64(name.suffix(8), radix: 16)!
            if let previous { #expect(number == previous + 1, "gap in the spool before \(name)") }
            previous = number
            try waitUntil("\(name) to be archived by the primary", timeout: 60) {
                (FileManager.default.fileExists(atPath: archive + "/" + name), "")
            }
            try run("/usr/bin/lz4", ["-dqf", walDirectory + "/\(name).lz4", plain + "/" + name])
            let ours = try Data(contentsOf: URL(fileURLWithPath: plain + "/" + name))
            let theirs = try Data(contentsOf: URL(fileURLWithPath: archive + "/" + name))
            #expect(ours.count == 16 << 20, "\(name) is \(ours.count) bytes")
            #expect(ours == theirs, "\(name) differs from the primary's copy")
        }
        #expect(names.last! >= last)
        if names.count >= 2 {
            let firstStart = segmentStart(names.first!)
            let lastStart = segmentStart(names.last!)
            let dump = try run(primary.bin + "/pg_waldump", ["-p", plain, "-s", firstStart, "-e", lastStart, "-q"], check: false)
            #expect(dump.status == 0, "pg_waldump failed: \(dump.error)")
        }
        return names.count
    }

    func segmentStart(_ name: String) -> String {
        let high = UInt64(name.suffix(16).prefix(8), radix: 16)!
        let low = UInt64(name.suffix(8), radix: 16)!
        return String(high, radix: 16, uppercase: true) + "/" + String(low << 24, radix: 16, uppercase: true)
    }
}

@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct ShipPathTests {
    @Test func shipsByteIdenticalSegmentsUnderLoad() throws {
        let fixture = try Fixture("ship-identical")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["wal_level": "logical"])
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "5", "-q"])
        try topology.primary.pgbench(["-T", "5", "-c", "4", "-j", "2"])
        let last = try topology.switchAndWait()
        let count = try topology.verifySpool(through: last)
        #expect(count >= 4)

        // The primary sees what the receiver has written and fsynced, nothing more.
        let row = try topology.primary.sql(
            "SELECT write_lsn IS NOT NULL, flush_lsn IS NOT NULL, sync_state FROM pg_stat_replication WHERE application_name = 'walship'"
        )
        #expect(row == "t|t|async")
        let flush = try topology.primary.sql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'walship'")
        #expect(lsn(flush)! <= (try topology.durable()))
        // The slot follows the flush position, so the primary recycles what is safe offsite.
        try waitUntil("the slot's restart_lsn to pass the switched segment", timeout: 30) {
            let restart = try topology.primary.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship_it'")
            return ((lsn(restart) ?? 0) >= (lsn(topology.segmentStart(last)) ?? .max), restart)
        }
        // LZ4 on the wire pays for itself on pgbench WAL.
        let status = try fetchStatus(port: topology.senderStatusPort)
        let sender = status["sender"] as? [String: Any] ?? [:]
        let wal = (sender["walBytesSent"] as? NSNumber)?.doubleValue ?? 0
        let wire = (sender["wireBytesSent"] as? NSNumber)?.doubleValue ?? 0
        #expect(wal > 0 && wire < wal / 2, "wire \(wire) vs WAL \(wal)")
        // Status never carries secrets or the password key.
        #expect(!(sender["source"] as? String ?? "").contains("password"))
        // The slot's retention on the primary is exposed.
        try waitUntil("the slot's retention in the sender's status", timeout: 30) {
            let slot = ((try fetchStatus(port: topology.senderStatusPort))["sender"] as? [String: Any])?["slot"] as? [String: Any]
            return (slot?["walStatus"] as? String == "reserved" && slot?["retainedBytes"] != nil, "\(slot ?? [:])")
        }
    }

    @Test func aBacklogTravelsInFullFramesAndArrivesIntact() throws {
        let fixture = try Fixture("ship-backlog")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        // WAL written while no sender runs, held by the slot: the sender finds a backlog when it starts.
        _ = try topology.primary.sql("SELECT pg_create_physical_replication_slot('walship_it', true)")
        try topology.primary.pgbench(["-i", "-s", "5", "-q"])
        let end = try #require(lsn(try topology.primary.sql("SELECT pg_current_wal_lsn()")))
        try topology.startReceiver()
        try topology.startSender()
        try waitUntil("the receiver to hold the backlog durably", timeout: 120) {
            (try topology.durable() >= end, "durable=\(String(try topology.durable(), radix: 16)) end=\(String(end, radix: 16))")
        }
        // The walsender sends at most 128 kB per message; the sender gathers them into 1 MiB-aligned frames while
        // the primary has more, rather than framing whatever has arrived (which a fast reader drains at once).
        let sender = try fetchStatus(port: topology.senderStatusPort)["sender"] as? [String: Any] ?? [:]
        let wal = (sender["walBytesSent"] as? NSNumber)?.doubleValue ?? 0
        let frames = (sender["walFramesSent"] as? NSNumber)?.doubleValue ?? 0
        #expect(wal >= 32 * 1_048_576 && frames > 0, "sent \(wal) bytes in \(frames) frames")
        #expect(wal / max(frames, 1) >= 512 * 1024, "\(wal) WAL bytes in \(frames) frames")
        // The spool's segments are the primary's, byte for byte (lz4 -d against the archive).
        let last = try topology.switchAndWait()
        #expect(try topology.verifySpool(through: last) >= 4)
    }

    @Test func aBacklogBehindASlowLinkIsCompressedHarder() throws {
        let fixture = try Fixture("ship-slow-link")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_commit": "off"])
        _ = try topology.primary.sql("SELECT pg_create_physical_replication_slot('walship_it', true)")
        // Updates after a checkpoint: full-page images, WAL that compresses about as production WAL does (a
        // freshly loaded table alone compresses so well that socket buffers would hold the whole backlog).
        try topology.primary.pgbench(["-i", "-s", "5", "-q"])
        _ = try topology.primary.sql("CHECKPOINT")
        try topology.primary.pgbench(["-T", "8", "-c", "4", "-j", "2"])
        let end = try #require(lsn(try topology.primary.sql("SELECT pg_current_wal_lsn()")))
        try topology.startReceiver()
        topology.senderTargetPort = try fixture.slowLink(to: topology.receiverPort)
        try topology.startSender()
        try waitUntil("the receiver to hold the backlog durably", timeout: 180) {
            (try topology.durable() >= end, "durable=\(String(try topology.durable(), radix: 16)) end=\(String(end, radix: 16))")
        }
        let sender = try fetchStatus(port: topology.senderStatusPort)["sender"] as? [String: Any] ?? [:]
        let high = (sender["walFramesHighCompression"] as? NSNumber)?.intValue ?? -1
        let frames = (sender["walFramesSent"] as? NSNumber)?.intValue ?? 0
        #expect(sender["compression"] as? String == "auto")
        #expect(
            high > 0 && high <= frames, "\(high) of \(frames) frames with high effort\n\(topology.sender?.log.suffix(2000) ?? "")"
        )
        // The harder-compressed blocks are stored as they came: the spool's segments are still the primary's
        // byte for byte (lz4 -d against the archive).
        let last = try topology.switchAndWait()
        #expect(try topology.verifySpool(through: last) >= 4)
    }

    @Test func slotProblemsAreClearErrors() throws {
        let fixture = try Fixture("ship-slots")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["wal_level": "logical"])
        try topology.startReceiver()
        try topology.primary.sql("SELECT pg_create_logical_replication_slot('logical_one', 'test_decoding')")
        let plain = ["send", "--source", topology.primary.conninfo, "--to", "127.0.0.1:\(topology.receiverPort)"]
        let base = plain + topology.linkArguments("sender")

        let logical = try run(IT.walshipBinary, base + ["--slot", "logical_one", "--create-slot"], timeout: 60, check: false)
        #expect(logical.status == 78, "set-up failures exit 78")
        #expect(logical.error.contains("logical slot"), "\(logical.error)")

        let missing = try run(IT.walshipBinary, base + ["--slot", "not_there"], timeout: 60, check: false)
        #expect(missing.status == 78)
        #expect(missing.error.contains("does not exist") && missing.error.contains("--create-slot"), "\(missing.error)")

        let badConninfo = try run(
            IT.walshipBinary,
            [
                "send", "--source", "host=127.0.0.1 nonsense", "--to", "127.0.0.1:1",
                "--slot", "x", "--insecure",
            ], timeout: 30, check: false)
        #expect(badConninfo.status == 78)
        #expect(
            badConninfo.error.contains("invalid connection string") && badConninfo.error.contains("hint"), "\(badConninfo.error)")

        let unreachable = try run(
            IT.walshipBinary,
            [
                "send", "--source", "host=127.0.0.1 port=\(IT.freePort()) user=postgres",
                "--to", "127.0.0.1:1", "--slot", "x", "--insecure",
            ], timeout: 60, check: false)
        #expect(unreachable.status == 78)
        #expect(unreachable.error.contains("could not connect") && unreachable.error.contains("hint"), "\(unreachable.error)")

        let plaintext = try run(IT.walshipBinary, plain + ["--slot", "x"], timeout: 30, check: false)
        #expect(plaintext.status != 0)
        #expect(plaintext.error.contains("--insecure"), "\(plaintext.error)")

        // A receiver that cannot listen where it is told to is a set-up failure too.
        let taken = try run(
            IT.walshipBinary,
            ["receive", "--listen", "127.0.0.1:\(topology.receiverPort)", "--spool", fixture.directory + "/spool-taken"]
                + topology.linkArguments("receiver"), timeout: 30, check: false)
        #expect(taken.status == 78 && taken.error.contains("cannot listen on"), "\(taken.status) \(taken.error)")

        // --create-slot twice reuses the physical slot.
        try topology.startSender()
        topology.sender?.stop()
        try topology.startSender()
        #expect(
            try topology.primary.sql(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walship_it' AND slot_type = 'physical'") == "1")
    }

    @Test func killsOfSenderAndReceiverLeaveNoGap() throws {
        let fixture = try Fixture("ship-kills")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture)
        try topology.startReceiver()
        try topology.startSender()
        try topology.primary.pgbench(["-i", "-s", "3", "-q"])
        // Runs until stopped below: each phase waits for more WAL, however long the phases before took on a busy host.
        let load = try fixture.daemon(
            "pgbench", topology.primary.bin + "/pgbench",
            [
                "-h", "127.0.0.1", "-p", "\(topology.primary.port)", "-U", "postgres", "-T", "600", "-c", "2", "postgres",
            ])

        func waitForProgress(_ what: String) throws {
            let before = try topology.durable()
            try waitUntil("durable WAL to advance \(what)", timeout: 60) {
                let now = try topology.durable()
                return (now > before + (4 << 20), String(now, radix: 16))
            }
        }

        try waitForProgress("under load")
        topology.sender!.kill9()
        topology.sender = try fixture.walship("sender", topology.senderArguments)
        try topology.waitUntilStreaming()
        try waitForProgress("after the sender was killed")

        topology.receiver!.kill9()
        try topology.startReceiver()
        try topology.waitUntilStreaming()
        try waitForProgress("after the receiver was killed")

        load.stop()
        let last = try topology.switchAndWait()
        let count = try topology.verifySpool(through: last)
        #expect(count >= 3)
    }

    @Test func syncModeCommitsWaitForTheOffsiteFsync() throws {
        let fixture = try Fixture("ship-sync")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["synchronous_standby_names": "'walship_sync'"])
        try topology.startReceiver()
        try topology.startSender(extra: ["--sync", "--application-name", "walship_sync"])
        try waitUntil("sync_state = sync", timeout: 60) {
            let state = try topology.primary.sql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walship_sync'")
            return (state == "sync", state)
        }
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)", timeout: 30)
        for id in 1...20 {
            let before = try topology.primary.sql(
                "SELECT pg_current_wal_insert_lsn(); INSERT INTO acknowledged VALUES (\(id))", timeout: 30)
            // The commit returned, so its WAL is on the receiver's disk.
            #expect(try topology.durable() > lsn(before.split(separator: "\n")[0].description)!)
        }

        topology.receiver!.kill9()
        let blocked = try fixture.daemon(
            "blocked-commit", "/usr/bin/psql",
            [
                "-h", "127.0.0.1", "-p", "\(topology.primary.port)", "-U", "postgres", "-d", "postgres", "-AtX",
                "-c", "INSERT INTO acknowledged VALUES (1000)",
            ])
        try waitUntil("the commit to wait for the DR site", timeout: 30) {
            let waiting = try topology.primary.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            return (waiting == "1", waiting)
        }
        #expect(blocked.isRunning)

        try topology.startReceiver()
        try waitUntil("the blocked commit to return once the receiver is back", timeout: 60) {
            (!blocked.isRunning, topology.sender!.log.suffix(1500).description)
        }
        #expect(blocked.exitStatus == 0)
        #expect(try topology.primary.sql("SELECT count(*) FROM acknowledged") == "21")
    }

    @Test func primaryRestartAndIdlePeriodsKeepTheStreamHealthy() throws {
        let fixture = try Fixture("ship-restart")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["wal_sender_timeout": "'3s'"])
        try topology.startReceiver()
        try topology.startSender()
        let pid = try topology.primary.sql("SELECT pid FROM pg_stat_replication WHERE application_name = 'walship'")
        #expect(!pid.isEmpty)
        // Idle for more than twice wal_sender_timeout: the walsender must never time us out.
        let idleUntil = Date().addingTimeInterval(7)
        while Date() < idleUntil {
            let now = try topology.primary.sql("SELECT pid FROM pg_stat_replication WHERE application_name = 'walship'")
            #expect(now == pid, "the walsender was replaced while idle: \(topology.sender!.log.suffix(800))")
            if now != pid { break }
            usleep(200_000)
        }
        #expect(!topology.primary.dataDirectory.isEmpty)
        try topology.primary.sql("CREATE TABLE before_restart AS SELECT generate_series(1, 10000) AS id")
        try topology.primary.restart()
        try waitUntil("the sender to stream again after the primary's restart", timeout: 90) {
            let count = try topology.primary.sql(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'")
            return (count == "1", topology.sender!.log.suffix(800).description)
        }
        try topology.primary.sql("CREATE TABLE after_restart AS SELECT generate_series(1, 10000) AS id")
        let last = try topology.switchAndWait()
        #expect(try topology.verifySpool(through: last) >= 1)
    }

    @Test func invalidatedSlotStopsTheSenderWithReseedAdvice() throws {
        let fixture = try Fixture("ship-invalidated")
        defer { fixture.tearDown() }
        var topology = try ShipTopology(fixture, primarySettings: ["max_slot_wal_keep_size": "'16MB'"])
        try topology.startReceiver()
        try topology.startSender()
        try topology.switchAndWait()
        topology.receiver!.kill9()
        // With the DR site away, the primary writes far more than max_slot_wal_keep_size.
        try waitUntil("the slot to be invalidated", timeout: 120) {
            try topology.primary.sql(
                "CREATE TABLE IF NOT EXISTS filler (x text); INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000)"
            )
            try topology.primary.sql("SELECT pg_switch_wal()")
            try topology.primary.sql("CHECKPOINT")
            let status = try topology.primary.sql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walship_it'")
            return (status == "lost", status)
        }
        try waitUntil("the sender to stop", timeout: 60) {
            (!topology.sender!.isRunning, topology.sender!.log.suffix(800).description)
        }
        #expect(topology.sender!.exitStatus != 0)
        #expect(topology.sender!.log.contains("re-seed"), "\(topology.sender!.log.suffix(1500))")
    }

    @Test func oneReceiverServesSeveralSystemsAndReplacesOnlyADeadLink() throws {
        let fixture = try Fixture("ship-systems")
        defer { fixture.tearDown() }
        var a = try ShipTopology(fixture)
        try a.startReceiver(linkTimeout: 5)
        try a.startSender(slot: "sender_a1")
        let other = try fixture.cluster("other")
        try other.start()
        let otherStatus = IT.freePort()
        let senderB = try fixture.walship(
            "sender-other",
            [
                "send", "--source", other.conninfo, "--to", "127.0.0.1:\(a.receiverPort)", "--slot", "sender_b", "--create-slot",
                "--status-listen", "127.0.0.1:\(otherStatus)", "--retry-max-seconds", "2",
            ] + a.linkArguments("sender"))
        try waitUntil("the second system to stream", timeout: 60) {
            ((try? fetchStatus(port: otherStatus))?["state"] as? String == "streaming", senderB.log.suffix(800).description)
        }
        let systemA = try a.primary.sql("SELECT system_identifier FROM pg_control_system()")
        let systemB = try other.sql("SELECT system_identifier FROM pg_control_system()")
        #expect(systemA != systemB)
        try a.switchAndWait()
        let segmentB = try other.sql("SELECT pg_walfile_name(pg_switch_wal())")
        try waitUntil("the second system's segment in its own directory", timeout: 60) {
            (FileManager.default.fileExists(atPath: a.spool + "/\(systemB)/wal/\(segmentB).lz4"), "")
        }

        // A second sender for system A is refused while the first is alive...
        let a2Status = IT.freePort()
        let a2 = try fixture.walship(
            "sender-a2",
            [
                "send", "--source", a.primary.conninfo, "--to", "127.0.0.1:\(a.receiverPort)", "--slot", "sender_a2",
                "--create-slot",
                "--status-listen", "127.0.0.1:\(a2Status)", "--retry-max-seconds", "2",
            ] + a.linkArguments("sender"))
        try waitUntil("the duplicate sender to be refused", timeout: 30) {
            (a2.log.contains("already streaming"), a2.log.suffix(800).description)
        }
        #expect(a.sender!.isRunning)
        // ...and accepted once the first has been silent past the link timeout (stopped, socket still open).
        a.sender!.child.signal(SIGSTOP)
        defer { a.sender!.child.signal(SIGCONT) }
        try waitUntil("the duplicate sender to take over the dead link", timeout: 60) {
            ((try? fetchStatus(port: a2Status))?["state"] as? String == "streaming", a2.log.suffix(800).description)
        }
        try a.primary.sql("CREATE TABLE after_takeover AS SELECT generate_series(1, 50000) AS id")
        let last = try a.switchAndWait()
        #expect(try a.verifySpool(through: last) >= 2)
    }
}
