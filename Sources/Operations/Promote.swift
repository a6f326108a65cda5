import Foundation
import Monitor
import PGReplication
import Spool
import StatusModel
import WALCore

/// What `walship promote` was asked to do.
public struct PromoteRequest: Sendable {
    /// The standby's data directory on this host; nil for a standby reached only over SQL (`standby`), on this
    /// host or another.
    public var dataDirectory: String?
    /// libpq conninfo of the standby; its local socket (as the data directory's owner) when nil.
    public var standby: String?
    public var spool: String?
    public var system: UInt64?
    /// Seconds for replay to reach the end of the spool, and then for the promotion.
    public var timeout: Int
    /// Base path of the report (`.json`, `.md`); chosen from the spool or the current directory when nil.
    public var report: String?
    public var force: Bool
    /// Perform every check and report what would happen, changing nothing: no fence, no pg_promote.
    public var dryRun: Bool
    /// The report's kind: "promote", or "switchover" for the promotion half of `walship switchover`.
    public var kind = "promote"
    /// Proof that the old primary is stopped, found by the caller (a switchover: the spool ends with its
    /// shutdown checkpoint). It stands for the receiver's readiness, which waits for the link to time out.
    public var primaryStoppedProof: String?

    public init(
        dataDirectory: String?, standby: String?, spool: String?, system: UInt64?, timeout: Int, report: String?, force: Bool,
        dryRun: Bool = false
    ) {
        self.dryRun = dryRun
        self.dataDirectory = dataDirectory
        self.standby = standby
        self.spool = spool
        self.system = system
        self.timeout = timeout
        self.report = report
        self.force = force
    }
}

/// How a promotion ended: the report to write, where, and why it failed (nil once promoted).
public struct PromotionOutcome: Sendable {
    public var report: PromotionReport
    public var reportBase: String
    public var failure: String?

    public var headline: String { report.headline(failure: failure) }
}

/// What is known about the standby and the spool before anything is changed: what the preconditions decide on.
public struct PromotionFacts: Sendable, Equatable {
    public var inRecovery: Bool
    public var systemIdentifier: UInt64?
    public var primaryConninfo: String
    public var restoreCommand: String
    /// This host's name: a primary_conninfo naming it reaches a receiver listening here.
    public var hostName: String
    /// Whether the standby runs on this host. A standby elsewhere (reached over SQL with `--standby`) names
    /// this host's receiver by one of `localNames`; its own loopback is not this host.
    public var standbyOnThisHost = true
    /// This host's other names and outward addresses, by which a standby elsewhere may name the receiver.
    public var localNames: [String] = []
    /// Settings the connection's role may not read (primary_conninfo is superuser-only without
    /// pg_read_all_settings): their values above are empty then.
    public var unreadableSettings: [String] = []
    /// The role promote connected as, and whether it may run pg_promote.
    public var role = ""
    public var mayPromote = true
    /// The option that named the standby, for hints: "--pgdata", or "--standby" without a data directory.
    public var standbyOption = "--pgdata"
    /// nil until the standby's own preconditions passed: the spool is read only for a standby worth promoting.
    public var spool: SpoolSide?

    public enum SpoolSide: Sendable, Equatable {
        case notGiven
        /// The spool's system differs from the standby's.
        case otherSystem(UInt64)
        case matching(MatchingSpool)
    }

    public struct MatchingSpool: Sendable, Equatable {
        public var systemDirectory: String
        /// The receiver's standby endpoint, as it recorded it in the spool.
        public var standbyListen: String?
        /// When an earlier promotion fenced this system.
        public var fencedAt: Date?
        /// Why an existing fence could not be read, if so: whether it was fenced before is then unknown.
        public var fenceUnreadable: String?
        /// Why the fence could not be written, if so.
        public var fenceUnwritable: String?
        /// Whether the old primary is lost, as the receiver (or, when it is down, primary.json) tells it.
        public var readiness: ReadinessReport?
        /// The timeline an earlier promotion's fence recorded, and the timeline the spool ends on now: a spool
        /// that has since followed a descendant of the promoted timeline (a switchover back) is open again.
        public var fencedTimeline: UInt32?
        public var spoolTimeline: UInt32?
        /// What the caller proved about the old primary instead of the receiver's readiness.
        public var primaryStoppedProof: String?

        public init(
            systemDirectory: String, standbyListen: String?, fencedAt: Date?, fenceUnreadable: String? = nil,
            fenceUnwritable: String?, readiness: ReadinessReport? = nil
        ) {
            self.readiness = readiness
            self.systemDirectory = systemDirectory
            self.standbyListen = standbyListen
            self.fencedAt = fencedAt
            self.fenceUnreadable = fenceUnreadable
            self.fenceUnwritable = fenceUnwritable
        }
    }

    public init(
        inRecovery: Bool, systemIdentifier: UInt64?, primaryConninfo: String, restoreCommand: String, hostName: String,
        spool: SpoolSide? = nil
    ) {
        self.inRecovery = inRecovery
        self.systemIdentifier = systemIdentifier
        self.primaryConninfo = primaryConninfo
        self.restoreCommand = restoreCommand
        self.hostName = hostName
        self.spool = spool
    }
}

/// One condition a promotion must meet, decided from the facts alone. Each is recorded in the report as a
/// check (when it says something), and a failed one refuses the promotion unless `--force` may override it.
public struct PromotionPrecondition: Sendable {
    public enum Verdict: Sendable, Equatable {
        case passed(String)
        /// Nothing worth a line in the report (not applicable, or fine).
        case silent
        /// Recorded as failed; refuses with `refusal` unless `forcible` and `--force`.
        case failed(String, refusal: String, forcible: Bool)
        /// Recorded as failed, but the promotion goes on with `warning` printed.
        case noted(String, warning: String)
        /// Cannot be decided: the promotion stops with this error, nothing recorded.
        case undecidable(String)
    }

    public let name: String
    public let evaluate: @Sendable (PromotionFacts) -> Verdict

    public init(_ name: String, evaluate: @escaping @Sendable (PromotionFacts) -> Verdict) {
        self.name = name
        self.evaluate = evaluate
    }
}

/// What evaluating preconditions in order came to: the checks to record, warnings to print, and the
/// refusal that stopped the promotion, if any (later preconditions are then not evaluated).
public struct PreconditionOutcome: Sendable, Equatable {
    public var checks: [PromotionReport.Check] = []
    public var warnings: [String] = []
    public var refusal: String?
}

extension PromotionPrecondition {
    public static func evaluate(
        _ preconditions: [PromotionPrecondition], facts: PromotionFacts, force: Bool
    ) -> PreconditionOutcome {
        var outcome = PreconditionOutcome()
        for precondition in preconditions {
            switch precondition.evaluate(facts) {
            case .passed(let detail):
                outcome.checks.append(.init(name: precondition.name, passed: true, detail: detail))
            case .silent:
                break
            case .failed(let detail, let refusal, let forcible):
                outcome.checks.append(.init(name: precondition.name, passed: false, detail: detail))
                if !(forcible && force) {
                    outcome.refusal = refusal
                    return outcome
                }
            case .noted(let detail, let warning):
                outcome.checks.append(.init(name: precondition.name, passed: false, detail: detail))
                outcome.warnings.append(warning)
            case .undecidable(let error):
                outcome.refusal = error
                return outcome
            }
        }
        return outcome
    }

    /// What the standby itself must be, decided before the spool is read.
    public static func standby(dataDirectory: String) -> [PromotionPrecondition] {
        standby(server: "the server of \(dataDirectory)")
    }

    /// The same for a standby reached only over SQL; `conninfo` without its secrets.
    public static func standby(conninfo: String) -> [PromotionPrecondition] {
        standby(server: "the server at \(conninfo)")
    }

    /// `server` names the standby in refusals.
    static func standby(server: String) -> [PromotionPrecondition] {
        [
            PromotionPrecondition("standby in recovery") { facts in
                facts.inRecovery
                    ? .passed("pg_is_in_recovery() is true")
                    : .failed(
                        "the server is not in recovery: it was already promoted (or is a primary)",
                        refusal: "\(server) is not a standby: it is already promoted (or a primary); nothing to do",
                        forcible: false)
            },
            PromotionPrecondition("system identifier") { facts in
                facts.systemIdentifier == nil ? .undecidable("cannot read the standby's system identifier") : .silent
            },
            // Checked before anything is fenced: a fence without a promotion would close the DR site for nothing.
            PromotionPrecondition("may promote") { facts in
                facts.mayPromote
                    ? .silent
                    : .failed(
                        "the role \(facts.role) may not execute pg_promote",
                        refusal:
                            "the role \(facts.role) may not run pg_promote, so \(server) cannot be promoted over this connection; nothing was changed (hint: connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO \(facts.role))",
                        forcible: false)
            },
        ]
    }

    /// What the spool must say: the standby replicates it, and nothing promoted a replica of it before.
    public static let spool: [PromotionPrecondition] = [
        PromotionPrecondition("system matches the spool") { facts in
            let standby = facts.systemIdentifier.map(String.init) ?? "?"
            switch facts.spool {
            case .otherSystem(let spoolSystem)?:
                return .failed(
                    "standby is system \(standby), the spool's is \(spoolSystem)",
                    refusal:
                        "the standby is database system \(standby) but the spool holds system \(spoolSystem): it is not a replica of this spool",
                    forcible: false)
            case .matching?: return .passed("system \(standby)")
            case .notGiven?, nil: return .silent
            }
        },
        PromotionPrecondition("replicates from walship") { facts in
            guard case .matching(let spool)? = facts.spool else { return .silent }
            let pointsAt = primaryConninfo(
                facts.primaryConninfo, reaches: spool.standbyListen, localNames: [facts.hostName] + facts.localNames,
                loopbackIsLocal: facts.standbyOnThisHost)
            if pointsAt || facts.restoreCommand.contains("restore-wal") {
                return .passed("primary_conninfo or restore_command leads to this spool")
            }
            if !facts.unreadableSettings.isEmpty {
                let settings = facts.unreadableSettings.joined(separator: " and ")
                return .failed(
                    "the role \(facts.role) may not read \(settings) (superuser or pg_read_all_settings needed)",
                    refusal:
                        "cannot tell whether the standby replicates from this walship receiver: the role \(facts.role) may not read its \(settings) (hint: connect as a superuser, or GRANT pg_read_all_settings TO \(facts.role); --force promotes without this check)",
                    forcible: true)
            }
            return .failed(
                "primary_conninfo does not name the receiver's standby endpoint (\(spool.standbyListen ?? "none recorded")) and restore_command does not use walship restore-wal",
                refusal:
                    "the standby does not replicate from this walship receiver: its primary_conninfo does not name the standby endpoint \(spool.standbyListen ?? "(none recorded in the spool)") and its restore_command does not run walship restore-wal (hint: check \(facts.standbyOption) and --spool; --force promotes anyway)",
                forcible: true)
        },
        PromotionPrecondition("not fenced before") { facts in
            guard case .matching(let spool)? = facts.spool else { return .silent }
            if let unreadable = spool.fenceUnreadable { return .undecidable(unreadable) }
            guard let fencedAt = spool.fencedAt else { return .silent }
            if let fenced = spool.fencedTimeline, let now = spool.spoolTimeline, now > fenced {
                return .passed(
                    "the fence of the promotion at \(formatISO8601(fencedAt)) (timeline \(fenced)) is behind: the spool has followed timeline \(now) since, which descends from it"
                )
            }
            return .failed(
                "the system was already fenced by a promotion at \(formatISO8601(fencedAt))",
                refusal:
                    "this system's DR replica was already promoted at \(formatISO8601(fencedAt)) (\(FenceRecord.path(spool.systemDirectory))); promoting a second replica would fork the DR site (hint: --force if this is intended)",
                forcible: true)
        },
        PromotionPrecondition("primary lost") { facts in
            guard case .matching(let spool)? = facts.spool else { return .silent }
            if let proof = spool.primaryStoppedProof { return .passed(proof) }
            guard let readiness = spool.readiness else { return .silent }
            if readiness.ready { return .passed(readiness.verdict) }
            var ways = ["stop or fence the old primary (then the sender reports it lost within 2 s)"]
            if let readyAt = readiness.readyAt { ways.append("wait until \(formatISO8601(readyAt))") }
            ways.append("--force if you are sure it is gone")
            return .failed(
                readiness.verdict,
                refusal:
                    "the old primary may still be alive: the DR site last heard it at \(readiness.primaryLastHeardAt.map(formatISO8601) ?? "an unknown time") (\(readiness.reason)). Not promoted: a second primary would fork the system (hint: \(ways.joined(separator: ", or "))); walship status shows the readiness",
                forcible: true)
        },
        PromotionPrecondition("fence writable") { facts in
            guard case .matching(let spool)? = facts.spool, let problem = spool.fenceUnwritable else { return .silent }
            return .failed(
                problem,
                refusal:
                    "cannot write the fence into \(spool.systemDirectory): \(problem) (hint: run walship promote as the spool's owner or root; --force promotes without fencing)",
                forcible: true)
        },
        PromotionPrecondition("spool given") { facts in
            guard case .notGiven? = facts.spool else { return .silent }
            return .noted(
                "without --spool the RPO cannot be measured and the receiver cannot be fenced",
                warning: "warning: no --spool: waiting only for what the standby has received; no RPO figures, no fence")
        },
    ]
}

/// Whether a primary_conninfo names the receiver's standby endpoint (host and port). `loopbackIsLocal` false: the
/// standby runs on another host, where a loopback name is that host.
func primaryConninfo(
    _ primaryConninfo: String, reaches standbyListen: String?, localNames: [String], loopbackIsLocal: Bool = true
) -> Bool {
    guard let standbyListen, let endpoint = parseHostPort(standbyListen), let conninfo = try? Conninfo(primaryConninfo)
    else { return false }
    return conninfo.reaches(
        host: endpoint.host, port: endpoint.port, localNames: localNames, loopbackIsLocal: loopbackIsLocal)
}

/// The steps of a promotion once its preconditions hold, in order.
public enum PromotionStep: Sendable, Equatable {
    /// Wait until the standby replayed everything the spool holds now: if the old primary still ships,
    /// chasing a moving end could take forever.
    case replaySpool
    /// Without a spool: wait until the standby replayed what it received itself.
    case replayReceived
    /// Fence the system at the receiver, so the spool stops growing, then replay what landed meanwhile.
    case fence
    /// pg_promote, the first accepted write, the figures.
    case promote

    public static func plan(spoolGiven: Bool) -> [PromotionStep] {
        spoolGiven ? [.replaySpool, .fence, .promote] : [.replayReceived, .promote]
    }
}

/// What a wait for replay came to: recorded as a check, and a refusal unless `--force`.
public func replayVerdict(replayed: LSN, goal: LSN, timeoutSeconds: Int, force: Bool) -> PreconditionOutcome {
    let reached = replayed >= goal
    var outcome = PreconditionOutcome()
    outcome.checks.append(
        .init(
            name: "replayed all received WAL", passed: reached,
            detail: reached
                ? "replayed \(replayed) ≥ spool end \(goal)" : "replayed only \(replayed) of \(goal) within \(timeoutSeconds) s"))
    guard !reached else { return outcome }
    if force {
        outcome.warnings.append(
            "warning: promoting with \(formatBytes(goal.bytesAfter(replayed))) of received WAL not replayed (--force)")
    } else {
        outcome.refusal =
            "the standby replayed up to \(replayed) but the spool holds WAL up to \(goal); it cannot reach the received WAL within \(timeoutSeconds) s. Not promoted. (hint: is walship receive running with --standby-listen, and the standby connected to it? see its log; --force promotes anyway, losing the difference)"
    }
    return outcome
}

extension PromotionReport {
    /// Records what the preconditions found; throws their refusal.
    mutating func apply(_ outcome: PreconditionOutcome, progress: (String) -> Void) throws {
        checks += outcome.checks
        outcome.warnings.forEach(progress)
        if let refusal = outcome.refusal { throw PromoteError(refusal) }
    }

    /// Closes the report of a promotion that stopped with `failure`: refused when a check failed, else failed
    /// (promoted stays promoted: the failure came after).
    public mutating func close(failure: String?, at time: Date = Date()) {
        finishedAt = time
        guard let failure else { return }
        outcome = outcome == "promoted" ? "promoted" : (checks.contains { !$0.passed } ? "refused" : "failed")
        check("completed", false, failure)
    }
}

/// Promotes the DR standby of `request.dataDirectory`, or the one `request.standby` reaches when there is no data
/// directory here: the preconditions, the steps, and the report. `progress` gets the lines to print as they happen.
public func promote(_ request: PromoteRequest, progress: @escaping (String) -> Void) async -> PromotionOutcome {
    let clockStart = ContinuousClock.now
    let dataDirectory = request.dataDirectory.map(absolutePath)
    var promotion = Promotion(
        request: request, progress: progress, clockStart: clockStart,
        report: PromotionReport(
            kind: request.kind, host: ProcessInfo.processInfo.hostName, startedAt: Date(), dataDirectory: dataDirectory),
        reportBase: request.report.map(absolutePath))
    var failure: String?
    do {
        try await promotion.run()
    } catch {
        failure = "\(error)"
    }
    promotion.report.close(failure: failure)
    if request.dryRun { promotion.report.outcome = failure == nil ? "would promote" : "would refuse" }
    return PromotionOutcome(
        report: promotion.report,
        reportBase: promotion.reportBase
            ?? defaultReportBase(kind: request.kind, directory: FileManager.default.currentDirectoryPath),
        failure: failure)
}

/// The driver of one promotion: gathers the facts, evaluates the preconditions, performs the steps.
struct Promotion {
    let request: PromoteRequest
    let progress: (String) -> Void
    let clockStart: ContinuousClock.Instant
    var report: PromotionReport
    var reportBase: String?

    var deadline: ContinuousClock.Instant { clockStart + .seconds(request.timeout) }

    mutating func run() async throws {
        // Without a data directory here, everything goes through the connection: the standby may be on another host.
        let cluster = try report.dataDirectory.map { try LocalCluster(dataDirectory: $0) }
        guard let text = try request.standby ?? cluster?.socketConninfo() else {
            throw PromoteError(PromoteRequest.standbyMissing)
        }
        let conninfo = try Conninfo(text)
        report.standby = conninfo.description
        let session = SQLSession(conninfo: conninfo, applicationName: "walship_promote")
        defer { Task { await session.close() } }
        do {
            if let cluster { try await cluster.connect(session) } else { _ = try await session.query("SELECT 1") }
        } catch {
            throw PromoteError("cannot connect to the standby (\(conninfo)): \(error)")
        }
        var facts = try await standbyFacts(session)
        let standbyPreconditions: [PromotionPrecondition]
        if let dataDirectory = report.dataDirectory {
            standbyPreconditions = PromotionPrecondition.standby(dataDirectory: dataDirectory)
        } else {
            try await locate(&facts, session)
            standbyPreconditions = PromotionPrecondition.standby(conninfo: conninfo.description)
        }
        try report.apply(
            PromotionPrecondition.evaluate(standbyPreconditions, facts: facts, force: request.force), progress: progress)

        var reader: SpoolReader?
        if let spool = request.spool, let standbySystem = facts.systemIdentifier {
            let root = absolutePath(spool)
            let chosen = try SpoolReader(root: root, system: request.system ?? standbySystem)
            facts.spool = spoolSide(chosen, root: root, standbySystem: standbySystem)
            if case .matching = facts.spool {
                reader = chosen
                if reportBase == nil { reportBase = defaultReportBase(kind: request.kind, directory: chosen.systemDirectory) }
            }
        } else {
            facts.spool = .notGiven
        }
        try report.apply(
            PromotionPrecondition.evaluate(PromotionPrecondition.spool, facts: facts, force: request.force),
            progress: progress)
        if reportBase == nil {
            reportBase = defaultReportBase(kind: request.kind, directory: FileManager.default.currentDirectoryPath)
        }

        let steps = PromotionSteps(session: session, report: progress)
        if request.dryRun { return try await rehearse(steps, reader: reader) }
        var state: PromotionSteps.ReplayState?
        var goal = LSN.invalid
        for step in PromotionStep.plan(spoolGiven: reader != nil) {
            switch step {
            case .replaySpool, .replayReceived:
                progress("== waiting for the standby to replay all WAL the receiver holds (\(elapsed(clockStart)))")
                let waited: (PromotionSteps.ReplayState, LSN)
                if step == .replaySpool, let reader {
                    let end = try reader.end().lsn
                    waited = try await steps.waitForReplay(target: { end }, deadline: deadline)
                } else {
                    waited = try await steps.waitForReplay(target: { try await received(session) }, deadline: deadline)
                }
                (state, goal) = waited
                try report.apply(
                    replayVerdict(
                        replayed: waited.0.replayed, goal: goal, timeoutSeconds: request.timeout, force: request.force),
                    progress: progress)
            case .fence:
                guard let reader, let replayed = state?.replayed else { continue }
                // Written durably (fsync, rename, directory fsync) before pg_promote: a returning old primary must
                // find the DR site closed whatever happens to this process after the promotion.
                do {
                    try FenceRecord(
                        promotedAt: Date(), promotedTimeline: nil, replayedLSN: replayed.description,
                        by: report.dataDirectory.map { "walship \(request.kind) --pgdata \($0)" }
                            ?? "walship \(request.kind) --standby \(report.standby ?? "?")"
                    ).save(systemDirectory: reader.systemDirectory)
                    report.check("fence written", true, FenceRecord.path(reader.systemDirectory))
                } catch {
                    report.check("fence written", false, "\(error)")
                    guard request.force else {
                        throw PromoteError(
                            "cannot write the fence \(FenceRecord.path(reader.systemDirectory)): \(error). Not promoted: the receiver would go on taking the old primary's WAL (hint: fix the spool's permissions or disk; --force promotes without a fence)"
                        )
                    }
                    progress("warning: could not fence the system: \(error) (--force)")
                }
                // Anything that landed between the wait and the fence is replayed too.
                (state, goal) = try await steps.waitForReplay(
                    target: { try reader.end().lsn }, deadline: min(deadline, .now + .seconds(10)))
            case .promote:
                if let state {
                    report.lastReplayedLSN = state.replayed.description
                    report.lastReplayedCommitTime = state.lastCommit
                }
                report.spoolEndLSN = reader == nil ? nil : goal.description
                if let reader { recordPrimaryProgress(into: &report, systemDirectory: reader.systemDirectory) }
                try await promote(steps, fencedIn: reader?.systemDirectory)
            }
        }
    }

    /// `--dry-run`: what the promotion would find now, without waiting, fencing or promoting. The replay check and
    /// the RPO figures use the standby's position at this moment.
    private mutating func rehearse(_ steps: PromotionSteps, reader: SpoolReader?) async throws {
        let state = try await steps.replayState()
        let goal = try reader?.end().lsn ?? state.received
        let verdict = replayVerdict(replayed: state.replayed, goal: goal, timeoutSeconds: 0, force: request.force)
        report.checks += verdict.checks
        report.lastReplayedLSN = state.replayed.description
        report.lastReplayedCommitTime = state.lastCommit
        report.spoolEndLSN = reader == nil ? nil : goal.description
        if let reader { recordPrimaryProgress(into: &report, systemDirectory: reader.systemDirectory) }
        report.measureRecoveryPoint()
        if verdict.refusal != nil {
            progress(
                "note: the standby has not replayed all the spool holds yet; a promotion would wait up to --timeout (\(request.timeout) s) for it"
            )
        }
        progress("dry run: would promote (nothing was changed)")
    }

    /// pg_promote and the first accepted write; the timeline goes into the fence.
    private mutating func promote(_ steps: PromotionSteps, fencedIn systemDirectory: String?) async throws {
        progress("== promoting (\(elapsed(clockStart)))")
        let (timeline, firstWriteAt) = try await steps.promote(deadline: deadline + .seconds(30), evidence: &report)
        report.promotedTimeline = timeline
        report.firstWriteAt = firstWriteAt
        report.rtoSeconds = roundedSeconds(ContinuousClock.now - clockStart)
        report.check("promoted", true, "pg_promote returned true; timeline \(timeline.map(String.init) ?? "?")")
        report.check("accepts writes", true, "a transaction ID was assigned and committed at \(formatISO8601(firstWriteAt))")
        if let systemDirectory, var fence = try? FenceRecord.load(systemDirectory: systemDirectory) {
            fence.promotedTimeline = timeline
            if let timeline { await recordLineage(of: timeline, steps, in: &fence) }
            try? fence.save(systemDirectory: systemDirectory)
        }
        report.measureRecoveryPoint()
        if let systemDirectory { report.judgeLoss(systemDirectory: systemDirectory, promotedAt: firstWriteAt) }
        report.outcome = "promoted"
    }

    /// The promoted timeline's history file into the fence, so that the receiver lets the new primary's WAL
    /// through (a switchover back) and nothing else. Without it the fence refuses everything: noted, not fatal.
    private mutating func recordLineage(of timeline: UInt32, _ steps: PromotionSteps, in fence: inout FenceRecord) async {
        do {
            let file = try await steps.historyFile(
                of: timeline, dataDirectory: report.dataDirectory, standby: request.standby)
            try fence.recordPromotion(timeline: timeline, historyFile: file)
            report.check(
                "fence records the promoted timeline", true,
                "timeline \(timeline) began at \(fence.switchPoint ?? "?") on timeline \(fence.parentTimeline.map(String.init) ?? "?"): WAL proven to descend from it passes the fence"
            )
        } catch {
            report.check("fence records the promoted timeline", false, "\(error)")
            progress(
                "warning: the fence does not record the promoted timeline's history (\(error)); the receiver refuses all WAL of this system, the new primary's too, until the spool is re-seeded"
            )
        }
    }

    /// The standby's facts, all through SQL. pg_settings leaves out a superuser-only setting (primary_conninfo)
    /// the role may not read, where current_setting would fail the whole query: NULL then, and noted.
    private mutating func standbyFacts(_ session: SQLSession) async throws -> PromotionFacts {
        let row = try await session.query(
            """
            SELECT pg_is_in_recovery()::text, (SELECT system_identifier FROM pg_control_system())::text,
                   (SELECT setting FROM pg_settings WHERE name = 'primary_conninfo'),
                   (SELECT setting FROM pg_settings WHERE name = 'restore_command'),
                   current_user::text, has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE')::text
            """)[0]
        report.systemIdentifier = row[1]
        var facts = PromotionFacts(
            inRecovery: row[0] == "true", systemIdentifier: row[1].flatMap { UInt64($0) }, primaryConninfo: row[2] ?? "",
            restoreCommand: row[3] ?? "", hostName: ProcessInfo.processInfo.hostName)
        facts.unreadableSettings = zip(["primary_conninfo", "restore_command"], [row[2], row[3]]).filter { $0.1 == nil }
            .map(\.0)
        facts.role = row[4] ?? "?"
        facts.mayPromote = row[5] == "true"
        return facts
    }

    /// Where a standby reached only over SQL runs: on this host when the server took the connection on a local
    /// socket, a loopback address or one of this host's addresses. Elsewhere, its primary_conninfo must name
    /// this host by a name or address it is known by from outside.
    private func locate(_ facts: inout PromotionFacts, _ session: SQLSession) async throws {
        // host() leaves out the mask inet's text carries ("127.0.0.1/32"); NULL over a Unix-domain socket.
        let serverAddress = try await session.query("SELECT host(inet_server_addr())")[0][0]
        let here = ThisHost.current()
        facts.standbyOption = "--standby"
        facts.standbyOnThisHost = here.runs(serverAddress: serverAddress)
        facts.localNames = here.namesSeenFromElsewhere(resolving: conninfoHosts(facts.primaryConninfo))
        progress(
            facts.standbyOnThisHost
                ? "the standby runs on this host (it answered on \(serverAddress ?? "a local socket"))"
                : "the standby runs on another host (it answered on \(serverAddress ?? "?")); promoting over SQL")
    }

    /// What the spool says about this standby; the receiver's record and the fence are read only for its own system.
    private func spoolSide(_ reader: SpoolReader, root: String, standbySystem: UInt64) -> PromotionFacts.SpoolSide {
        guard reader.systemIdentifier == standbySystem else { return .otherSystem(reader.systemIdentifier) }
        let receiver = try? ReceiverRecord.load(root: root)
        // An unreadable fence stops the promotion when its precondition comes, after the ones before it.
        var fence: FenceRecord?
        var fenceUnreadable: String?
        do { fence = try FenceRecord.load(systemDirectory: reader.systemDirectory) } catch {
            fenceUnreadable = "\(error)"
        }
        // A caller's proof that the primary stopped stands for the readiness: the receiver is not asked twice.
        var readiness: ReadinessReport?
        if request.primaryStoppedProof == nil {
            let asked = ReadinessQuery.ask(systemDirectory: reader.systemDirectory, systemIdentifier: standbySystem)
            progress("promotion \(asked.verdict)")
            readiness = asked
        }
        var side = PromotionFacts.MatchingSpool(
            systemDirectory: reader.systemDirectory, standbyListen: receiver?.standbyListen, fencedAt: fence?.promotedAt,
            fenceUnreadable: fenceUnreadable,
            // A dry run changes nothing, not even a probe file: it asks the kernel instead.
            fenceUnwritable: request.dryRun
                ? (access(reader.systemDirectory, W_OK) == 0 ? nil : "no write permission in \(reader.systemDirectory)")
                : cannotWrite(directory: reader.systemDirectory),
            readiness: readiness)
        side.fencedTimeline = fence?.promotedTimeline
        side.spoolTimeline = try? reader.end().timeline
        side.primaryStoppedProof = request.primaryStoppedProof
        return .matching(side)
    }
}

/// What the standby's WAL receiver has received (its own view, when no spool is given).
private func received(_ session: SQLSession) async throws -> LSN {
    LSN(try await session.query("SELECT pg_last_wal_receive_lsn()::text")[0][0] ?? "") ?? .invalid
}

/// Why nothing can be written into `directory`, or nil when a probe file could be.
func cannotWrite(directory: String) -> String? {
    let probe = directory + "/.walship-promote-probe"
    guard FileManager.default.createFile(atPath: probe, contents: Data()) else {
        return "no write permission in \(directory)"
    }
    unlink(probe)
    return nil
}

/// Seconds since `start`, for progress headings.
func elapsed(_ start: ContinuousClock.Instant) -> String {
    String(format: "%.1f s", roundedSeconds(ContinuousClock.now - start))
}

extension PromoteRequest {
    /// Neither a data directory nor a connection: nothing names the standby.
    public static let standbyMissing =
        "no standby given (hint: --pgdata DIR for a standby on this host, or --standby CONNINFO to promote one over SQL alone, on this host or another, e.g. --standby 'host=dr-db port=5432 user=postgres')"
}

struct PromoteError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
