import ChildProcess
import Foundation
import PGReplication
import StatusModel
import WALCore

/// What `walship rejoin` was asked to do.
public struct RejoinRequest: Sendable {
    /// The old primary's data directory; its server must be stopped.
    public var dataDirectory: String
    /// libpq conninfo of the new primary (an SQL connection; pg_rewind uses it too).
    public var source: String
    /// primary_conninfo of the rejoined standby: this site's `walship receive --standby-listen`.
    public var primaryConninfo: String
    /// The spool of this site's receiver: the rejoined standby's restore_command, and pg_rewind's for WAL
    /// of the old timeline the data directory no longer has.
    public var spool: String
    public var keepCopy: String?
    public var report: String?
    public var start: Bool
    public var bindir: String
    public var walshipPath: String?
    /// Where to re-seed from when a rewind is impossible or fails: nil refuses instead (`--reseed`).
    public var reseed: ReseedTarget?
    /// `restore-wal` options that fetch from the peer site's spool what the local spool lacks (`--wal-from-peer`):
    /// old-timeline WAL pg_rewind needs when this site's pg_wal recycled it.
    public var peerWALArguments: [String] = []

    /// This site's receiver, to which `walship backup` ships a base backup of the new primary.
    public struct ReseedTarget: Sendable {
        /// HOST:PORT of this site's `walship receive --listen`.
        public var receiver: String
        /// The link's security options for `walship backup` (`--tls-cert …` or `--insecure`).
        public var linkArguments: [String]

        public init(receiver: String, linkArguments: [String]) {
            self.receiver = receiver
            self.linkArguments = linkArguments
        }
    }

    public init(
        dataDirectory: String, source: String, primaryConninfo: String, spool: String, keepCopy: String?, report: String?,
        start: Bool, bindir: String, walshipPath: String?
    ) {
        self.dataDirectory = dataDirectory
        self.source = source
        self.primaryConninfo = primaryConninfo
        self.spool = spool
        self.keepCopy = keepCopy
        self.report = report
        self.start = start
        self.bindir = bindir
        self.walshipPath = walshipPath
    }
}

/// The evidence `walship rejoin` leaves (JSON and Markdown): what was set aside, what was copied, how long it took.
public struct RejoinReport: Codable, Sendable, Equatable {
    public var kind = "rejoin"
    /// "rejoined", "reseeded" (a rewind was impossible and --reseed took a new copy), or "refused" / "failed" with
    /// `failure`.
    public var outcome = "failed"
    public var failure: String?
    public var host: String
    public var startedAt: Date
    public var finishedAt: Date?
    public var dataDirectory: String
    /// The new primary's conninfo with any password removed.
    public var source: String
    public var systemIdentifier: String?
    public var oldTimeline: UInt32?
    public var newTimeline: UInt32?
    /// Where the old primary's timeline left the new primary's history.
    public var forkLSN: String?
    /// The old primary's WAL past the fork, copied aside before anything changed, and what it holds.
    public var setAsideDirectory: String?
    public var lostWAL: RejoinPlan.LostWAL?
    public var keptCopy: String?
    /// Where the old data directory was moved, whole, before a re-seed; and why the rewind could not be used.
    public var keptAside: String?
    public var reseedReason: String?
    /// What pg_rewind copied, against the new primary's data directory.
    public var bytesCopied: UInt64?
    public var sourceBytes: UInt64?
    public var steps: [OperationStep] = []
    public var nextSteps: [String] = []

    public var markdown: String {
        var out = ["# walship rejoin: \(outcome)", ""]
        if let failure { out += ["**\(outcome == "refused" ? "Refused" : "Failed"):** \(failure)", ""] }
        func row(_ name: String, _ value: String?) { out.append("| \(name) | \(value ?? "-") |") }
        out += ["| | |", "|---|---|"]
        row("Host", host)
        row("Data directory", dataDirectory)
        row("New primary", source)
        row("System", systemIdentifier)
        row("Timelines", oldTimeline.map { old in "\(old) → \(newTimeline.map(String.init) ?? "?")" })
        row("Fork", forkLSN)
        row("Set aside", setAsideDirectory)
        if let lost = lostWAL {
            row(
                "Transactions the new timeline never got",
                "\(lost.commits) committed, \(lost.aborts) rolled back, WAL \(lost.firstLSN ?? "-") … \(lost.lastLSN ?? "-")")
            row("First / last lost commit", "\(lost.firstCommitAt ?? "-") / \(lost.lastCommitAt ?? "-")")
        }
        row("Copy kept", keptCopy)
        row("Old data directory kept aside (re-seed)", keptAside)
        row("Why re-seeded", reseedReason)
        row("Copied by pg_rewind", bytesCopied.map(formatBytes))
        row("New primary's data directory", sourceBytes.map(formatBytes))
        row("Started", formatISO8601(startedAt))
        row("Finished", finishedAt.map(formatISO8601))
        out += OperationStep.markdown(steps: steps, nextSteps: nextSteps)
        return out.joined(separator: "\n") + "\n"
    }

    public func write(base: String) throws -> (json: String, markdown: String) {
        try writeReport(self, markdown: markdown, base: base)
    }
}

public struct RejoinError: Error, CustomStringConvertible {
    public let description: String
    /// A precondition that failed before anything changed.
    public let refused: Bool
    /// A rewind cannot bring this directory back, but a re-seed can (`--reseed`).
    public let reseedable: Bool
    public init(_ description: String, refused: Bool = false, reseedable: Bool = false) {
        self.description = description
        self.refused = refused
        self.reseedable = reseedable
    }
}

/// Brings a failed old primary back as a standby of the new primary by difference: sets aside the WAL the new
/// timeline never got, rewinds with pg_rewind, and configures it to follow the new primary through this site's
/// walship receive. Nothing is deleted: the set-aside WAL and `--keep-copy` stay.
public func rejoin(
    _ request: RejoinRequest, progress: @escaping (String) -> Void
) async -> (
    report: RejoinReport, reportBase: String
) {
    let dataDirectory = absolutePath(request.dataDirectory)
    var report = RejoinReport(
        host: ProcessInfo.processInfo.hostName, startedAt: Date(), dataDirectory: dataDirectory,
        source: (try? Conninfo(request.source))?.description ?? "(unreadable conninfo)")
    let reportBase =
        request.report.map(absolutePath)
        ?? defaultReportBase(
            kind: "rejoin", directory: URL(fileURLWithPath: dataDirectory).deletingLastPathComponent().path,
            at: report.startedAt)
    do {
        do {
            try await rewind(request, dataDirectory: dataDirectory, report: &report, progress: progress)
            report.outcome = "rejoined"
        } catch let error as RejoinError where error.reseedable && request.reseed != nil {
            progress("cannot rewind: \(error.description)")
            progress("re-seeding instead (--reseed): the old data directory is moved aside, never deleted")
            report.reseedReason = error.description
            try await reseed(request, from: request.reseed!, dataDirectory: dataDirectory, report: &report, progress: progress)
            report.outcome = "reseeded"
        }
    } catch let error as RejoinError {
        report.outcome = error.refused ? "refused" : "failed"
        report.failure = error.description
    } catch {
        report.failure = "\(error)"
    }
    report.finishedAt = Date()
    return (report, reportBase)
}

private func rewind(
    _ request: RejoinRequest, dataDirectory: String, report: inout RejoinReport, progress: (String) -> Void
) async throws {
    let cluster: LocalCluster
    do { cluster = try LocalCluster(dataDirectory: dataDirectory) } catch {
        throw RejoinError("\(error)", refused: true)
    }
    let owner = DrillPlan.pgCtlUser(osUser: cluster.ownerName, runningAsRoot: getuid() == 0)
    var clock = StepClock()
    func step(_ name: String, _ detail: String) {
        report.steps.append(clock.finish(name, detail))
        progress("\(name): \(detail)")
    }

    // 1. The old primary: stopped, and able to be rewound.
    let status = try await ChildProcess(request.bindir + "/pg_ctl", ["-D", dataDirectory, "status"], user: owner).run()
    if status.status == 0 {
        throw RejoinError(
            "the server of \(dataDirectory) is running; rejoin rewinds a stopped old primary (hint: stop it first: pg_ctl -D \(dataDirectory) stop -m fast)",
            refused: true)
    }
    let control = try await ChildProcess(request.bindir + "/pg_controldata", [dataDirectory], output: .captured).runChecked(
        what: "read the control file of \(dataDirectory)", hint: "is it a PostgreSQL 15 data directory?")
    let controlFields = RejoinPlan.controlData(control.standardOutput)
    guard let target = RejoinPlan.Target(controlData: controlFields) else {
        throw RejoinError("pg_controldata of \(dataDirectory) printed no system identifier or timeline", refused: true)
    }
    report.systemIdentifier = String(target.systemIdentifier)
    report.oldTimeline = target.timeline

    // 2. The new primary: a primary of the same system, on a timeline descending from the old one.
    let session = SQLSession(conninfo: try Conninfo(request.source), applicationName: "walship_rejoin")
    defer { Task { await session.close() } }
    let rows = try await session.query(
        "SELECT pg_is_in_recovery()::text, system_identifier::text, (SELECT timeline_id FROM pg_control_checkpoint())::text FROM pg_control_system()"
    )
    guard let row = rows.first, row.count == 3, let system = row[1].flatMap({ UInt64($0) }),
        let sourceTimeline = row[2].flatMap({ TimeLineID($0) })
    else { throw RejoinError("the new primary answered its identity with \(rows)") }
    guard row[0] == "false" else {
        throw RejoinError(
            "the server at --source is in recovery, not a primary (hint: --source must reach the promoted server)",
            refused: true)
    }
    if let why = RejoinPlan.refusal(target: target, sourceSystem: system, dataDirectory: dataDirectory) {
        throw RejoinError(why, refused: true, reseedable: target.systemIdentifier == system)
    }
    // 3. A checkpoint first: pg_rewind reads the source's timeline from its control file, which a just-promoted
    // server updates only at its first checkpoint.
    _ = try await session.query("CHECKPOINT")
    let historyName = historyFileName(timeline: sourceTimeline)
    let history = try await session.query("SELECT convert_from(pg_read_binary_file($1), 'UTF8')", ["pg_wal/" + historyName])
    guard let text = history.first?.first ?? nil,
        let fork = RejoinPlan.forkPoint(targetTimeline: target.timeline, sourceTimeline: sourceTimeline, sourceHistory: text)
    else {
        throw RejoinError(
            "the new primary's timeline \(sourceTimeline) does not descend from the old primary's timeline \(target.timeline) (hint: is --source the server promoted from this one's standby?)",
            refused: true)
    }
    report.newTimeline = sourceTimeline
    report.forkLSN = fork.description
    step(
        "checks",
        "old primary on timeline \(target.timeline) (\(target.state)), new primary on \(sourceTimeline), fork at \(fork)")

    // 4. Before anything changes: the old primary's WAL past the fork, and a whole copy if asked for.
    let aside = dataDirectory + ".lost-" + compactTimestamp(report.startedAt)
    let walDirectory = dataDirectory + "/pg_wal"
    let segmentSize =
        controlFields["Bytes per WAL segment"].flatMap { UInt64($0) }
        .flatMap { WALSegmentSize(bytes: $0) } ?? .default
    let pastFork = RejoinPlan.segmentsPastFork(
        fileNames: (try? FileManager.default.contentsOfDirectory(atPath: walDirectory)) ?? [], timeline: target.timeline,
        fork: fork, segmentSize: segmentSize)
    try FileManager.default.createDirectory(atPath: aside, withIntermediateDirectories: false)
    for name in pastFork { try FileManager.default.copyItem(atPath: walDirectory + "/" + name, toPath: aside + "/" + name) }
    report.setAsideDirectory = aside
    if !pastFork.isEmpty {
        let dump = try await ChildProcess(
            request.bindir + "/pg_waldump",
            ["-p", aside, "-t", String(target.timeline), "-s", fork.description],
            environment: ["TZ": "UTC"], output: .captured, captureLimit: 64 << 20
        ).run()
        report.lostWAL = RejoinPlan.lostWAL(waldump: dump.standardOutput)
    } else {
        report.lostWAL = RejoinPlan.LostWAL(commits: 0, aborts: 0)
    }
    let lost = report.lostWAL!
    step(
        "set aside",
        "\(pastFork.count) WAL file(s) past the fork copied to \(aside): \(lost.commits) committed transaction(s) the new primary never got"
    )
    if let keep = request.keepCopy.map(absolutePath) {
        guard !FileManager.default.fileExists(atPath: keep) else {
            throw RejoinError("--keep-copy \(keep) exists; walship never overwrites it (hint: name a new directory)")
        }
        try await ChildProcess("cp", ["-a", dataDirectory, keep]).runChecked(
            what: "copy \(dataDirectory) to \(keep)", hint: "--keep-copy needs room for the whole data directory")
        report.keptCopy = keep
        step("copy kept", "\(keep) is a startable copy of the old primary as it was")
    }

    // 5. pg_rewind, reading old-timeline WAL the directory lacks from the spool.
    let restoreCommand =
        ([
            restoreWALCommand(
                walship: walshipExecutable(request.walshipPath), spool: absolutePath(request.spool),
                system: target.systemIdentifier)
        ] + request.peerWALArguments).joined(separator: " ")
    try appendSettings(["restore_command = '\(escape(restoreCommand))'"], to: dataDirectory)
    // pg_rewind copies the new primary's configuration files over the old primary's: its port, paths and access
    // rules would come with them. The old primary's own are put back after.
    var ownConfiguration: [String: String] = [:]
    for name in RejoinPlan.configurationFiles {
        if let text = try? String(contentsOfFile: dataDirectory + "/" + name, encoding: .utf8) { ownConfiguration[name] = text }
    }
    let rewound = try await ChildProcess(
        request.bindir + "/pg_rewind",
        ["--target-pgdata", dataDirectory, "--source-server", request.source, "--restore-target-wal", "--progress"],
        user: owner, output: .captured, captureLimit: 1 << 20, timeout: .seconds(3600)
    ).run()
    let said = rewound.standardOutput + "\n" + rewound.standardError
    guard rewound.succeeded else {
        throw RejoinError(
            "pg_rewind failed (exit \(rewound.status)): \(rewound.errorTail(lines: 8)) (hint: the data directory may be half rewound: \(report.keptCopy.map { "the copy \($0) is intact, " } ?? "")the WAL past the fork is in \(aside); --reseed re-seeds it with walship backup and walship restore)",
            reseedable: true)
    }
    let sizes = RejoinPlan.rewindSizes(said)
    report.bytesCopied = sizes.copiedBytes
    report.sourceBytes = sizes.sourceBytes
    step(
        "rewind",
        "pg_rewind copied \(sizes.copiedBytes.map(formatBytes) ?? "?") of the new primary's \(sizes.sourceBytes.map(formatBytes) ?? "?")"
    )

    // 6. A standby of the new primary through this site's receiver, with its own configuration back.
    for (name, text) in ownConfiguration {
        try text.write(toFile: dataDirectory + "/" + name, atomically: false, encoding: .utf8)
    }
    try appendSettings(
        RejoinPlan.standbySettings(primaryConninfo: request.primaryConninfo, restoreCommand: restoreCommand), to: dataDirectory)
    let signal = dataDirectory + "/standby.signal"
    guard FileManager.default.createFile(atPath: signal, contents: nil) else {
        throw RejoinError("could not create \(signal); without it the old primary would start as a second primary")
    }
    if getuid() == 0, cluster.owner != 0 { _ = chown(signal, cluster.owner, cluster.group) }
    step("standby", "standby.signal, primary_conninfo \(request.primaryConninfo), restore_command from \(request.spool)")
    if request.start {
        try await startRejoined(dataDirectory, owner: owner, bindir: request.bindir)
        step("start", "the rejoined standby runs")
    }
    report.nextSteps = [
        checkReplayStep(started: request.start, dataDirectory: dataDirectory),
        "re-enter what was lost, or decide it is not wanted: \(lost.commits) committed transaction(s) are in \(aside) (pg_waldump -p \(aside) -t \(target.timeline) -s \(fork))",
        "to come home later: walship switchover, first at the new primary's site, then here (docs/switchover.md)",
    ]
}

/// The first next step after a rejoin or a re-seed.
private func checkReplayStep(started: Bool, dataDirectory: String) -> String {
    started
        ? "check that it replays: SELECT pg_last_wal_replay_lsn() on it, walship status at this site"
        : "start it: pg_ctl -D \(dataDirectory) start, then check that it replays"
}

private func startRejoined(_ dataDirectory: String, owner: String?, bindir: String) async throws {
    try await ChildProcess(
        bindir + "/pg_ctl", ["-D", dataDirectory, "-l", dataDirectory + "/rejoin-start.log", "-w", "-t", "120", "start"],
        user: owner, output: .discarded
    ).runChecked(what: "start the rejoined standby", hint: "see \(dataDirectory)/rejoin-start.log")
}

/// A rewind being impossible: moves the old data directory aside whole (never deleted: the lost transactions are in
/// it), ships a base backup of the new primary to this site's receiver, restores it as a standby of that receiver,
/// and puts back the old server's own configuration files.
private func reseed(
    _ request: RejoinRequest, from target: RejoinRequest.ReseedTarget, dataDirectory: String, report: inout RejoinReport,
    progress: (String) -> Void
) async throws {
    let cluster = try LocalCluster(dataDirectory: dataDirectory)
    let owner = DrillPlan.pgCtlUser(osUser: cluster.ownerName, runningAsRoot: getuid() == 0)
    var clock = StepClock()
    func step(_ name: String, _ detail: String) {
        report.steps.append(clock.finish(name, detail))
        progress("\(name): \(detail)")
    }
    // The rewind that could not be used checked that the server is stopped.
    var ownConfiguration: [String: String] = [:]
    for name in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
        if let text = try? String(contentsOfFile: dataDirectory + "/" + name, encoding: .utf8) { ownConfiguration[name] = text }
    }
    let aside = dataDirectory + ".reseed-" + compactTimestamp(report.startedAt)
    guard rename(dataDirectory, aside) == 0 else {
        throw RejoinError(
            "cannot move \(dataDirectory) aside to \(aside): \(String(cString: strerror(errno))); nothing was changed",
            refused: true)
    }
    report.keptAside = aside
    step("set aside", "\(dataDirectory) moved whole to \(aside): the old primary as it was, its WAL past the fork included")

    let walship = walshipExecutable(request.walshipPath)
    let backup = try await ChildProcess(
        walship, ["backup", "--source", request.source, "--to", target.receiver] + target.linkArguments,
        output: .captured, captureLimit: 1 << 20, timeout: .seconds(6 * 3600)
    ).run()
    guard backup.succeeded else {
        throw RejoinError(
            "walship backup of the new primary failed (exit \(backup.status)): \(backup.errorTail(lines: 6)) (hint: the old data directory is intact in \(aside); the new primary's role needs REPLICATION and a replication line in its pg_hba.conf; --reseed-to is this site's walship receive --listen)"
        )
    }
    let completed = backup.standardOutput.split(separator: "\n").last { $0.contains("complete") }.map(String.init)
    step("backup", completed ?? "a base backup of the new primary is in this site's spool")

    var restoreArguments = [
        "restore", "--spool", absolutePath(request.spool), "--pgdata", dataDirectory, "--standby", "--primary-conninfo",
        request.primaryConninfo, "--walship-path", walship, "--os-user", cluster.ownerName,
    ]
    if let system = report.systemIdentifier { restoreArguments += ["--system", system] }
    let restored = try await ChildProcess(walship, restoreArguments, output: .captured, captureLimit: 1 << 20).run()
    guard restored.succeeded else {
        throw RejoinError(
            "walship restore failed (exit \(restored.status)): \(restored.errorTail(lines: 6)) (hint: the old data directory is intact in \(aside))"
        )
    }
    // The backup brought the new primary's configuration (its port, paths and access rules): the old server's own
    // go back, written in place so that they keep the owner restore gave them.
    for (name, text) in ownConfiguration {
        try text.write(toFile: dataDirectory + "/" + name, atomically: false, encoding: .utf8)
    }
    let copied = directorySize(dataDirectory)
    report.bytesCopied = copied
    report.sourceBytes = copied
    step(
        "restore",
        "restored as a standby of \(request.primaryConninfo) (\(formatBytes(copied)) copied: the whole data directory), its own configuration files put back"
    )
    if request.start {
        try await startRejoined(dataDirectory, owner: owner, bindir: request.bindir)
        step("start", "the re-seeded standby runs")
    }
    report.nextSteps = [
        checkReplayStep(started: request.start, dataDirectory: dataDirectory),
        "the old primary, with the transactions the new primary never got, is in \(aside): query or archive it, then remove it when nobody needs it",
        "set wal_log_hints = on at both sites, so that the next fail-back can rewind instead of copying everything",
    ]
}

/// Bytes the regular files under `path` take.
private func directorySize(_ path: String) -> UInt64 {
    var total: UInt64 = 0
    let enumerator = FileManager.default.enumerator(atPath: path)
    while let name = enumerator?.nextObject() as? String {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path + "/" + name)
        if attributes?[.type] as? FileAttributeType == .typeRegular { total += (attributes?[.size] as? UInt64) ?? 0 }
    }
    return total
}
