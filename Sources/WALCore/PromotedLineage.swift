/// Where a promoted DR replica's timeline came from: its number and its history file (every ancestor and where
/// it ended). A fence that knows it can tell WAL of the new primary, which descends from this timeline, from WAL
/// of the old primary or of another server promoted at the old site, which may carry the same timeline number.
public struct PromotedLineage: Hashable, Sendable {
    public let timeline: TimeLineID
    /// The promoted timeline's history; its last entry names the fenced timeline and the switch point.
    public let history: [TimelineHistoryEntry]

    /// Nil unless `history` can be the history of `timeline`: not empty, every ancestor older than it.
    public init?(timeline: TimeLineID, history: [TimelineHistoryEntry]) {
        guard let last = history.last, last.parent < timeline else { return nil }
        self.timeline = timeline
        self.history = history
    }

    /// The timeline the DR replica left when it was promoted.
    public var fencedTimeline: TimeLineID { history[history.count - 1].parent }

    /// Where the promoted timeline begins (the fenced timeline ends there).
    public var switchPoint: LSN { history[history.count - 1].switchPoint }
}

/// What a fence makes of a timeline a sender offers.
public enum FencePassage: Hashable, Sendable {
    /// The timeline is the promoted one or descends from it: its WAL may pass.
    case descends
    /// The timeline is numbered like the promoted one or newer, but nothing proves its history yet.
    case needsHistory
    /// The timeline cannot descend from the promoted one; why, in a sentence fragment.
    case refused(String)

    /// Whether `timeline`, with `history` (its history file, nil when not yet known), descends from the promoted
    /// timeline at its recorded switch point. Numbers alone prove nothing: the old site may have promoted a server
    /// of its own to the same number, from another point. A fence without a lineage (written before the promotion
    /// finished, or by an older walship) refuses everything.
    public static func judge(
        lineage: PromotedLineage?, offered timeline: TimeLineID, history: [TimelineHistoryEntry]?
    ) -> FencePassage {
        guard let lineage else { return .refused("the fence records no promoted timeline history") }
        guard timeline >= lineage.timeline else {
            return .refused(
                timeline == lineage.fencedTimeline
                    ? "timeline \(timeline) is the fenced timeline"
                    : "timeline \(timeline) is older than the promoted timeline \(lineage.timeline)")
        }
        guard let history else { return .needsHistory }
        if let last = history.last, last.parent >= timeline {
            return .refused("the history of timeline \(timeline) names timeline \(last.parent) as an ancestor")
        }
        let expected = lineage.history.map(\.lineStep)
        let offered = history.map(\.lineStep)
        guard offered.starts(with: expected) else {
            return .refused(
                "timeline \(timeline) does not descend from the promoted timeline \(lineage.timeline) (which began at \(lineage.switchPoint) on timeline \(lineage.fencedTimeline)): its history differs"
            )
        }
        if timeline == lineage.timeline {
            return offered.count == expected.count
                ? .descends
                : .refused("the history of timeline \(timeline) differs from the promoted timeline's")
        }
        guard offered.count > expected.count, offered[expected.count].parent == lineage.timeline else {
            return .refused(
                "timeline \(timeline) does not branch from the promoted timeline \(lineage.timeline): its history skips it")
        }
        return .descends
    }
}

extension TimelineHistoryEntry {
    /// The entry without its free-text reason: what identifies a timeline's branch.
    fileprivate var lineStep: LineStep { LineStep(parent: parent, switchPoint: switchPoint) }
}

private struct LineStep: Equatable {
    let parent: TimeLineID
    let switchPoint: LSN
}
