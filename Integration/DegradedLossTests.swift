import Foundation
import Testing

/// The promotion report after `--on-receiver-loss degrade-after`: what it says about acknowledged commits must hold
/// against the commits the writer saw acknowledged and the rows the promoted replica has.
@Suite(.serialized, .enabled(if: IT.pgBin != nil, "PostgreSQL 15 server binaries are required"))
struct DegradedLossTests {
    /// The DR site is cut off, the sender degrades and the primary keeps acknowledging from the local buffer; then the
    /// primary site is lost (primary and sender killed) before the link ever comes back. The receiver never heard of
    /// the episode, so the report must not claim every acknowledged commit, must say that what the primary
    /// acknowledged after the last contact is unknown, and every commit missing at the DR replica must have been
    /// acknowledged after that last contact.
    @Test func aLossWhileDegradedIsReportedAsUnknownAfterTheLastContact() throws {
        let fixture = try Fixture("degraded-loss")
        defer { fixture.tearDown() }
        var site = try DegradingSite(fixture)
        try site.commits(10, "in synchronous mode")
        // The receiver records its contact with the primary about once a second: let it record one after these
        // commits, so that the report's last contact has commits before it to check.
        let lastSynchronous = try #require(timedCommits(site.ackedFile).last?.at)
        let progress = site.topology.spool + "/" + site.topology.systemIdentifier + "/primary.json"
        try waitUntil("the receiver to record an acknowledgement after the synchronous commits", timeout: 30) {
            let data = FileManager.default.contents(atPath: progress) ?? Data()
            let record = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            let at = parseISO8601(record?["acknowledgedAt"] as? String)
            return ((at ?? .distantPast) > lastSynchronous, "\(record ?? [:])")
        }

        site.topology.receiver!.kill9()
        try site.commits(15, "acknowledged from the local buffer")
        let sender = try fetchStatus(port: site.topology.senderStatusPort)["sender"] as? [String: Any] ?? [:]
        #expect(sender["degraded"] as? Bool == true, "\(sender)")
        let exposure = (sender["rpoExposure"] as? [String: Any])?["bytes"] as? Int ?? 0
        #expect(exposure > 0, "\(sender)")

        // The primary site is lost while degraded: nothing more reaches the DR site.
        kill(try postmasterPID(of: site.topology.primary), SIGKILL)
        site.topology.sender!.kill9()
        site.writer.kill9()
        let acknowledged = timedCommits(site.ackedFile)

        // The receiver comes back for the promotion; no sender will ever link again, so --force. It runs with another
        // link timeout, so it writes primary.json afresh before any link: the last contact it found must stay there.
        try site.topology.startReceiver(linkTimeout: 6)
        try waitUntil("the restarted receiver to write primary.json", timeout: 30) {
            let data = FileManager.default.contents(atPath: progress) ?? Data()
            let record = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            return (record?["linkTimeoutSeconds"] as? Int == 6, "\(record ?? [:])")
        }
        let (report, present) = try site.promote(["--force"])
        let missing = acknowledged.filter { !present.contains($0.id) }
        print(
            "loss while degraded: \(acknowledged.count) acknowledged, \(missing.count) missing; exposure when last seen \(exposure) B; report: \(report["loss"] ?? "")"
        )
        #expect(report["everyAcknowledgedCommitPresent"] as? Bool == false, "\(report)")
        #expect(report["modeAtLoss"] as? String == "degraded", "\(report)")
        let loss = report["loss"] as? String ?? ""
        #expect(loss.contains("may be missing") && loss.contains("acknowledged after that is unknown"), "\(loss)")
        let history = report["modeHistory"] as? [[String: Any]] ?? []
        // The receiver never heard of the episode: the history ends in sync before the last contact (a loaded machine
        // may show an earlier brief episode), and the silence is what the report judges.
        let lastContact = try #require(parseISO8601(report["lastContactAt"] as? String), "\(report)")
        #expect(history.last?["mode"] as? String == "sync", "\(history)")
        #expect(
            history.allSatisfy { (parseISO8601($0["at"] as? String) ?? .distantFuture) <= lastContact },
            "\(history) after \(lastContact)")

        // The loss is real, and only of commits acknowledged after the last contact the report names.
        #expect(!missing.isEmpty, "nothing was lost although commits were acknowledged from the local buffer")
        #expect(
            missing.allSatisfy { $0.at > lastContact },
            "missing commits acknowledged before the last contact \(lastContact): \(missing.filter { $0.at <= lastContact }.prefix(5).map(\.id))"
        )
        // Everything acknowledged before the last contact is there.
        let before = acknowledged.filter { $0.at < lastContact }
        #expect(!before.isEmpty && before.allSatisfy { present.contains($0.id) }, "\(before.count) before the contact")
    }

    /// A degraded episode that ended (receiver back, buffer shipped, synchronous again) before a later loss of the
    /// primary: the report's mode history shows the episode and its exposure, and nothing acknowledged is missing.
    @Test func anEpisodeThatEndedShowsInTheHistoryAndNothingIsMissing() throws {
        let fixture = try Fixture("degraded-ended")
        defer { fixture.tearDown() }
        var site = try DegradingSite(fixture)
        try site.commits(10, "in synchronous mode")

        site.topology.receiver!.kill9()
        try site.commits(15, "acknowledged from the local buffer")
        try site.topology.startReceiver(linkTimeout: 5)
        try waitUntil("synchronous acknowledgement again", timeout: 90) {
            let sender = try fetchStatus(port: site.topology.senderStatusPort)["sender"] as? [String: Any] ?? [:]
            return (sender["degraded"] as? Bool == false && sender["rpoExposure"] == nil, "\(sender)")
        }
        try site.commits(10, "after the episode")
        // The sender tells the receiver at its next look at the primary (every 2 s) that the mode is sync again.
        try waitUntil("the receiver to hear that the mode is sync again", timeout: 30) {
            let system = (try fetchStatus(port: site.topology.receiverStatusPort)["systems"] as? [[String: Any]])?.first
            let mode = system?["mode"] as? [String: Any]
            return (mode?["mode"] as? String == "sync", "\(mode ?? [:])")
        }

        // The primary dies while synchronous; its sender, still up, tells the receiver it is lost.
        kill(try postmasterPID(of: site.topology.primary), SIGKILL)
        try waitForPromotionReady(statusPort: site.topology.receiverStatusPort, timeout: 30)
        site.writer.kill9()
        site.topology.sender!.kill9()
        let acknowledged = timedCommits(site.ackedFile)
        let (report, present) = try site.promote([])
        let missing = acknowledged.filter { !present.contains($0.id) }
        let history = report["modeHistory"] as? [[String: Any]] ?? []
        print(
            "episode then loss: \(acknowledged.count) acknowledged, \(missing.count) missing; mode at the loss \(report["modeAtLoss"] ?? "?"); history \(history.map { "\($0["mode"] ?? "?")\(($0["exposureBytes"] as? Int).map { " (\($0) B)" } ?? "")" })"
        )
        // The episode with its exposure (a loaded machine may add a brief one without any), then sync again.
        let degraded = history.lastIndex {
            $0["mode"] as? String == "degraded" && ($0["exposureBytes"] as? Int ?? 0) > 0
        }
        #expect(degraded != nil, "the episode and its exposure are not in the history: \(history)")
        if let degraded {
            #expect(history[(degraded + 1)...].contains { $0["mode"] as? String == "sync" }, "\(history)")
        }
        #expect(history.last?["mode"] as? String == "sync", "\(history)")
        #expect(missing.isEmpty, "missing after the episode ended: \(missing.prefix(10).map(\.id))")
        // Whatever the report concluded, it must not contradict the rows: a claim of completeness needs no loss.
        if report["everyAcknowledgedCommitPresent"] as? Bool == true { #expect(missing.isEmpty) }
        #expect(!(report["loss"] as? String ?? "").isEmpty)
    }
}

/// A synchronous primary whose sender runs `--on-receiver-loss degrade-after=2s` with a local buffer, a receiver with a
/// standby endpoint, a DR standby streaming from it, and a writer that records each commit's acknowledgement time.
private struct DegradingSite {
    var topology: ShipTopology
    let standby: Cluster
    let writer: Daemon
    let ackedFile: String
    let fixture: Fixture

    init(_ fixture: Fixture) throws {
        self.fixture = fixture
        topology = try ShipTopology(
            fixture, primarySettings: ["synchronous_standby_names": "'walship'", "wal_sender_timeout": "'5s'"],
            spoolOwnedByPostgres: true)
        let standbyPort = IT.freePort()
        topology.receiverExtra = ["--standby-listen", "127.0.0.1:\(standbyPort)", "--standby-trust"]
        try topology.startReceiver(linkTimeout: 5)
        try topology.startSender(extra: [
            "--sync", "--link-timeout", "5", "--on-receiver-loss", "degrade-after=2s",
            "--buffer-dir", fixture.directory + "/buffer",
        ])
        try fixture.baseBackup(of: topology.primary, name: "dr")
        standby = try fixture.startCopy(
            name: "dr", signal: "standby.signal",
            settings: [
                "primary_conninfo = 'host=127.0.0.1 port=\(standbyPort) user=postgres application_name=dr_replica'",
                "hot_standby = on", "wal_retrieve_retry_interval = '1s'", "wal_receiver_timeout = '5s'",
            ])
        try topology.primary.sql("CREATE TABLE acknowledged (id int PRIMARY KEY)")
        ackedFile = fixture.directory + "/acked.txt"
        writer = try fixture.daemon(
            "timed-writer", "/bin/bash",
            [
                "-c",
                """
                for i in $(seq 1 10000000); do
                  psql -h 127.0.0.1 -p \(topology.primary.port) -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 \\
                    -c "INSERT INTO acknowledged (id) VALUES ($i)" >/dev/null 2>&1 \\
                    && echo "$i $(date +%s.%N)" >> \(ackedFile) || sleep 0.05
                done
                """,
            ])
    }

    func commits(_ more: Int, _ what: String) throws {
        let before = timedCommits(ackedFile).count
        try waitUntil("\(more) commits \(what)", timeout: 60) {
            let now = timedCommits(ackedFile).count
            return (now >= before + more, "\(now - before) new commits; sender: \(topology.sender?.log.suffix(600) ?? "")")
        }
    }

    /// `walship promote` with `extra`; the report's JSON and the ids the promoted replica holds.
    func promote(_ extra: [String]) throws -> ([String: Any], Set<Int>) {
        let reportPath = fixture.logDirectory + "/promotion"
        let promote = try run(
            IT.walshipBinary,
            ["promote", "--pgdata", standby.dataDirectory, "--spool", topology.spool, "--report", reportPath, "--timeout", "60"]
                + extra, timeout: 150, check: false)
        try #require(promote.status == 0, "\(promote.output)\(promote.error)")
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: reportPath + ".json")))
                as? [String: Any])
        let present = Set(try standby.sql("SELECT id FROM acknowledged").split(separator: "\n").compactMap { Int($0) })
        return (report, present)
    }
}

/// The commits the timed writer recorded: id and when its COMMIT returned.
private func timedCommits(_ file: String) -> [(id: Int, at: Date)] {
    ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
        let fields = line.split(separator: " ")
        guard fields.count == 2, let id = Int(fields[0]), let seconds = Double(fields[1]) else { return nil }
        return (id, Date(timeIntervalSince1970: seconds))
    }
}

private func parseISO8601(_ text: String?) -> Date? {
    guard let text else { return nil }
    return (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text))
        ?? (try? Date.ISO8601FormatStyle().parse(text))
}
