import Foundation
import WALCore

/// The sender's last word on the primary, placed on the receiver's clock (the frame carries ages, not times).
public struct SenderVerdictRecord: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable, CaseIterable {
        /// Its replication connection is up, or the primary answered its last attempt.
        case alive
        /// Its replication connection dropped and nothing answered since, for less than the 2 s it takes to decide.
        case unanswered
        /// The connection dropped and every attempt for 2 s was refused or unanswered.
        case lost
        /// `walship send` stopped (SIGTERM, SIGINT) while the primary was not lost.
        case senderStopped = "sender stopped"
    }

    public var state: State
    public var receivedAt: Date
    /// When the primary last answered the sender, if ever.
    public var primaryLastHeardAt: Date?
    /// When the replication connection dropped (`unanswered`, `lost`): the primary is lost since then.
    public var droppedAt: Date?

    public init(state: State, receivedAt: Date, primaryLastHeardAt: Date?, droppedAt: Date?) {
        self.state = state
        self.receivedAt = receivedAt
        self.primaryLastHeardAt = primaryLastHeardAt
        self.droppedAt = droppedAt
    }
}

/// What the DR site knows of one system's primary, the input of `PromotionReadiness.evaluate`.
public struct PrimaryContactFacts: Sendable, Equatable {
    /// A stream link is registered for the system.
    public var linkConnected: Bool
    /// When that link last brought a frame (a link silent past the link timeout counts as lost).
    public var linkLastFrameAt: Date?
    /// The last time anything showed the primary alive: a WAL or keepalive frame of the stream link, or the
    /// sender's verdict (its own last contact).
    public var primaryLastHeardAt: Date?
    /// `--link-timeout` of the receiver, in seconds.
    public var linkTimeoutSeconds: Double
    /// What the sender does when the DR site is away, as its last link stated it; nil when unknown (version 1).
    public var receiverLoss: ReceiverLossRule?
    /// The sender's newest verdict, received after the last stream link ended; nil when none since.
    public var verdict: SenderVerdictRecord?
    /// The ship protocol version of the sender's last link: version 1 sends no verdicts.
    public var senderProtocolVersion: UInt16?

    public init(
        linkConnected: Bool, linkLastFrameAt: Date? = nil, primaryLastHeardAt: Date?, linkTimeoutSeconds: Double,
        receiverLoss: ReceiverLossRule? = nil, verdict: SenderVerdictRecord? = nil, senderProtocolVersion: UInt16? = nil
    ) {
        self.linkConnected = linkConnected
        self.linkLastFrameAt = linkLastFrameAt
        self.primaryLastHeardAt = primaryLastHeardAt
        self.linkTimeoutSeconds = linkTimeoutSeconds
        self.receiverLoss = receiverLoss
        self.verdict = verdict
        self.senderProtocolVersion = senderProtocolVersion
    }
}

/// Whether promoting the DR replica is safe as far as the DR site can tell: the old primary is lost, not merely
/// out of sight. `walship promote` refuses without `--force` while not ready; `walship status` shows the verdict.
///
/// The rules, in order:
/// 1. A stream link that brings frames: the sender streams from a live primary. Not ready.
/// 2. The sender's "lost" verdict (its replication connection dropped, reconnects refused or unanswered for 2 s):
///    ready, at once. It comes from the primary's own site, so it tells a dead primary from a cut link.
/// 3. The sender stopped on purpose while the primary was alive: not ready, and no wait makes it so. A planned
///    stop says nothing of the primary's fate, and nobody watches the primary any more.
/// 4. Silence (no link, no verdict, or a verdict that the primary answered): under `degrade-after` never ready.
///    A primary that is only cut off from the DR site acknowledges commits from its sender's local buffer once the
///    delay has passed; silence cannot tell that from a dead primary, and promoting would lose those commits and
///    fork the system. Waiting longer proves nothing, so only the sender's verdict or an operator who fenced the
///    old primary (`--force`) can go ahead.
/// 5. Otherwise (block, asynchronous, or a version 1 sender that states no rule) ready once `--link-timeout` has
///    passed since the primary was last heard: the receiver closes a link silent that long as dead.
public struct PromotionReadiness: Codable, Sendable, Equatable {
    public var ready: Bool
    /// Why, in a sentence with the times that matter.
    public var reason: String
    /// When silence alone makes it ready (rule 5), while not ready yet.
    public var readyAt: Date?

    public init(ready: Bool, reason: String, readyAt: Date? = nil) {
        self.ready = ready
        self.reason = reason
        self.readyAt = readyAt
    }

    /// The one line `walship status` and `walship promote` print.
    public var summary: String { (ready ? "ready: " : "not ready: ") + reason }

    public static func evaluate(_ facts: PrimaryContactFacts, now: Date) -> PromotionReadiness {
        let timeout = facts.linkTimeoutSeconds
        let heard = [facts.primaryLastHeardAt, facts.verdict?.primaryLastHeardAt].compactMap { $0 }.max()
        let heardText = heard.map(formatISO8601) ?? "never"
        // A registered link silent past the timeout is about to be closed as dead: it is judged as silence.
        if facts.linkConnected, facts.linkLastFrameAt.map({ now.timeIntervalSince($0) < timeout }) ?? true {
            return PromotionReadiness(ready: false, reason: "the primary was heard at \(heardText) (sender linked)")
        }
        if let verdict = facts.verdict {
            switch verdict.state {
            case .lost:
                let since = (verdict.droppedAt ?? verdict.receivedAt)
                return PromotionReadiness(
                    ready: true,
                    reason:
                        "the sender reports the primary lost since \(formatISO8601(since)): its replication connection dropped and reconnects were refused or unanswered for 2 s (last heard \(heardText))"
                )
            case .senderStopped:
                return PromotionReadiness(
                    ready: false,
                    reason:
                        "walship send stopped at \(formatISO8601(verdict.receivedAt)) while the primary was alive (last heard \(heardText)); a planned stop says nothing of the primary, and nobody watches it now"
                )
            case .alive, .unanswered:
                break
            }
        }
        guard let heard else {
            return PromotionReadiness(
                ready: false, reason: "nothing has been heard of the primary (no link, no verdict, no recorded contact)")
        }
        let unanswered =
            facts.verdict?.state == .unanswered
            ? "; the sender cannot reach it since \(formatISO8601(facts.verdict?.droppedAt ?? heard)) and is still deciding"
            : ""
        if case .degradeAfter(let delay) = facts.receiverLoss {
            let from = heard.addingTimeInterval(delay)
            return PromotionReadiness(
                ready: false,
                reason:
                    "the primary may be acknowledging locally \(from > now ? "from" : "since") \(formatISO8601(from)) (last heard \(heardText), sender --on-receiver-loss degrade-after \(formatSeconds(delay)) s): silence cannot tell a cut link from a lost primary\(unanswered)"
            )
        }
        let readyAt = heard.addingTimeInterval(timeout)
        let versionNote =
            facts.senderProtocolVersion.map { $0 < 2 }
                == true ? " (the sender speaks ship protocol version 1 and reports no verdict: silence alone decides)" : ""
        if now >= readyAt {
            return PromotionReadiness(
                ready: true,
                reason:
                    "the link is silent: the primary was last heard at \(heardText), more than --link-timeout (\(formatSeconds(timeout)) s) ago\(versionNote)"
            )
        }
        return PromotionReadiness(
            ready: false,
            reason:
                "the primary was heard at \(heardText) and the link has been silent for less than --link-timeout (\(formatSeconds(timeout)) s): ready at \(formatISO8601(readyAt)) unless it is heard again\(unanswered)\(versionNote)",
            readyAt: readyAt)
    }
}

func formatSeconds(_ seconds: Double) -> String {
    seconds == seconds.rounded() ? String(Int(seconds)) : String(format: "%.1f", seconds)
}

/// What the receiver's control socket answers to `readiness`, and what `/status` shows per system as `promotion`:
/// the verdict and the facts it rests on. `walship promote` builds the same from `primary.json` when the receiver is
/// down (`source` then says so).
public struct ReadinessReport: Codable, Sendable, Equatable {
    public var systemIdentifier: String
    public var generatedAt: Date
    /// "receiver" (its memory, through the control socket or /status) or "primary.json" (the receiver is down).
    public var source: String
    /// The one line: "ready: …" or "not ready: …".
    public var verdict: String
    public var ready: Bool
    public var reason: String
    /// When silence alone makes it ready, while not ready yet.
    public var readyAt: Date?
    public var primaryLastHeardAt: Date?
    public var linkConnected: Bool
    /// Since when the stream link is down (nil while connected).
    public var linkSilentSince: Date?
    public var linkTimeoutSeconds: Double
    /// The sender's rule for a lost DR site, as its last link stated it ("none", "block", "degrade-after N s").
    public var receiverLoss: String?
    /// The mode history's current mode and since when.
    public var mode: String?
    public var modeSince: Date?
    /// Whether the primary waited for the DR site (mode sync) when the link was lost; nil while linked or unknown.
    public var linkSynchronousWhenLost: Bool?
    /// The sender's newest verdict on the primary since its last stream link.
    public var senderVerdict: SenderVerdictRecord?
    public var senderProtocolVersion: UInt16?

    public init(
        systemIdentifier: String, generatedAt: Date, source: String, readiness: PromotionReadiness,
        facts: PrimaryContactFacts, linkSilentSince: Date?, mode: String?, modeSince: Date?,
        linkSynchronousWhenLost: Bool?
    ) {
        self.systemIdentifier = systemIdentifier
        self.generatedAt = generatedAt
        self.source = source
        self.verdict = readiness.summary
        self.ready = readiness.ready
        self.reason = readiness.reason
        self.readyAt = readiness.readyAt
        self.primaryLastHeardAt = [facts.primaryLastHeardAt, facts.verdict?.primaryLastHeardAt].compactMap { $0 }.max()
        self.linkConnected = facts.linkConnected
        self.linkSilentSince = facts.linkConnected ? nil : linkSilentSince
        self.linkTimeoutSeconds = facts.linkTimeoutSeconds
        self.receiverLoss = facts.receiverLoss?.description
        self.mode = mode
        self.modeSince = modeSince
        self.linkSynchronousWhenLost = facts.linkConnected ? nil : linkSynchronousWhenLost
        self.senderVerdict = facts.verdict
        self.senderProtocolVersion = facts.senderProtocolVersion
    }

    /// The readiness it carries.
    public var readiness: PromotionReadiness { PromotionReadiness(ready: ready, reason: reason, readyAt: readyAt) }
}

extension ReadinessReport {
    /// The report for one system from what the DR site knows: the receiver's memory, or `primary.json` and the mode
    /// history when the receiver is down. `link` is the mode history's newest link entry's rule and version.
    public static func assess(
        systemIdentifier: String, source: String, now: Date, linkConnected: Bool, linkLastFrameAt: Date?,
        linkSilentSince: Date?, primaryLastHeardAt: Date?, linkTimeoutSeconds: Double, receiverLoss: String?,
        senderProtocolVersion: UInt16?, verdict: SenderVerdictRecord?, mode: String?, modeSince: Date?
    ) -> ReadinessReport {
        let facts = PrimaryContactFacts(
            linkConnected: linkConnected, linkLastFrameAt: linkLastFrameAt, primaryLastHeardAt: primaryLastHeardAt,
            linkTimeoutSeconds: linkTimeoutSeconds, receiverLoss: receiverLoss.flatMap(ReceiverLossRule.init(description:)),
            verdict: verdict, senderProtocolVersion: senderProtocolVersion)
        let synchronousWhenLost: Bool? = linkConnected ? nil : mode.flatMap { $0 == "unknown" ? nil : $0 == "sync" }
        return ReadinessReport(
            systemIdentifier: systemIdentifier, generatedAt: now, source: source,
            readiness: PromotionReadiness.evaluate(facts, now: now), facts: facts, linkSilentSince: linkSilentSince,
            mode: mode, modeSince: modeSince, linkSynchronousWhenLost: synchronousWhenLost)
    }
}
