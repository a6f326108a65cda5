import Testing

@testable import WALCore

/// The fence's rule: which timelines a promotion at the DR site lets through. The DR replica left timeline 1 at
/// 0/5000060 and was promoted to timeline 2; the old site's HA partner may have promoted to a timeline 2 of its own.
@Suite struct FencePassageTests {
    func entry(
        _ parent: TimeLineID, _ lsn: String, _ reason: String = "no recovery target specified"
    )
        -> TimelineHistoryEntry
    {
        TimelineHistoryEntry(parent: parent, switchPoint: LSN(lsn)!, reason: reason)
    }

    var promoted: PromotedLineage { PromotedLineage(timeline: 2, history: [entry(1, "0/5000060")])! }

    func judge(
        _ timeline: TimeLineID, _ history: [TimelineHistoryEntry]?, lineage: PromotedLineage? = nil
    )
        -> FencePassage
    {
        FencePassage.judge(lineage: lineage ?? promoted, offered: timeline, history: history)
    }

    @Test func theLineageNamesTheFencedTimelineAndTheSwitchPoint() {
        #expect(promoted.fencedTimeline == 1)
        #expect(promoted.switchPoint == LSN("0/5000060")!)
        #expect(PromotedLineage(timeline: 2, history: []) == nil)
        #expect(PromotedLineage(timeline: 2, history: [entry(2, "0/5000060")]) == nil)
        #expect(PromotedLineage(timeline: 3, history: [entry(1, "0/3000000"), entry(4, "0/5000060")]) == nil)
    }

    @Test func aFenceWithoutALineageRefusesEverything() {
        for timeline: TimeLineID in [1, 2, 3] {
            #expect(
                FencePassage.judge(lineage: nil, offered: timeline, history: [entry(1, "0/5000060")])
                    == .refused("the fence records no promoted timeline history"))
        }
    }

    @Test func theFencedTimelineAndItsAncestorsAreRefused() {
        let lineage = PromotedLineage(timeline: 3, history: [entry(1, "0/3000000"), entry(2, "0/5000060")])!
        #expect(judge(2, nil, lineage: lineage) == .refused("timeline 2 is the fenced timeline"))
        #expect(judge(2, [entry(1, "0/3000000")], lineage: lineage) == .refused("timeline 2 is the fenced timeline"))
        #expect(judge(1, [], lineage: lineage) == .refused("timeline 1 is older than the promoted timeline 3"))
        #expect(judge(1, nil) == .refused("timeline 1 is the fenced timeline"))
    }

    @Test func thePromotedTimelineOrANewerOneWaitsForItsHistory() {
        #expect(judge(2, nil) == .needsHistory)
        #expect(judge(5, nil) == .needsHistory)
    }

    @Test func thePromotedTimelineWithItsOwnHistoryPasses() {
        #expect(judge(2, [entry(1, "0/5000060")]) == .descends)
        // The reason is free text; only timelines and switch points identify a branch.
        #expect(judge(2, [entry(1, "0/5000060", "before 2026-12-07 12:00:00+00")]) == .descends)
    }

    @Test func theSameNumberOnAForeignHistoryIsRefused() {
        // The old site's partner, promoted from timeline 1 at another point.
        guard case .refused(let reason) = judge(2, [entry(1, "0/4000028")]) else {
            Issue.record("a foreign timeline 2 passed")
            return
        }
        #expect(reason.contains("does not descend from the promoted timeline 2"), "\(reason)")
        // One further back in time: a fork off an older timeline numbered alike.
        let lineage = PromotedLineage(timeline: 3, history: [entry(1, "0/3000000"), entry(2, "0/5000060")])!
        guard case .refused = judge(3, [entry(1, "0/2800000"), entry(2, "0/5000060")], lineage: lineage) else {
            Issue.record("a timeline 3 whose timeline 2 forked elsewhere passed")
            return
        }
        // The promoted number with more history than the promoted timeline has.
        guard case .refused = judge(2, [entry(1, "0/5000060"), entry(1, "0/6000000")]) else {
            Issue.record("a malformed history passed")
            return
        }
    }

    @Test func descendantsWithTheMatchingHistoryPass() {
        #expect(judge(3, [entry(1, "0/5000060"), entry(2, "0/9000000")]) == .descends)
        #expect(judge(4, [entry(1, "0/5000060"), entry(2, "0/9000000"), entry(3, "0/A000000")]) == .descends)
    }

    @Test func newerTimelinesOfForeignDescentAreRefused() {
        // The foreign timeline 2 failed over once more.
        guard case .refused = judge(3, [entry(1, "0/4000028"), entry(2, "0/9000000")]) else {
            Issue.record("a descendant of a foreign timeline 2 passed")
            return
        }
        // A fork of timeline 1 at the promoted switch point but numbered past the promoted timeline: it is not
        // the promoted timeline's child.
        guard case .refused(let reason) = judge(3, [entry(1, "0/5000060")]) else {
            Issue.record("a sibling of the promoted timeline passed")
            return
        }
        #expect(reason.contains("skips it"), "\(reason)")
        // A history that names the offered timeline itself as an ancestor.
        guard case .refused = judge(3, [entry(1, "0/5000060"), entry(3, "0/9000000")]) else {
            Issue.record("a history naming its own timeline passed")
            return
        }
        // No history at all for a timeline past 1.
        guard case .refused = judge(3, []) else {
            Issue.record("an empty history passed")
            return
        }
    }
}
