/// One line of a timeline history file: WAL of `parent` is valid strictly below `switchPoint`.
public struct TimelineHistoryEntry: Hashable, Sendable {
    public let parent: TimeLineID
    public let switchPoint: LSN
    public let reason: String

    public init(parent: TimeLineID, switchPoint: LSN, reason: String) {
        self.parent = parent
        self.switchPoint = switchPoint
        self.reason = reason
    }
}

public enum TimelineHistoryError: Error, Equatable, CustomStringConvertible {
    case malformedLine(Int, String)
    case notAscending(line: Int)

    public var description: String {
        switch self {
        case .malformedLine(let n, let text): "timeline history line \(n) is malformed: \(text)"
        case .notAscending(let n): "timeline history line \(n): timelines must ascend"
        }
    }
}

/// Parses a `TTTTTTTT.history` file as PostgreSQL's `readTimeLineHistory` does: tab- or
/// space-separated `parentTLI switchpoint reason`, blank lines and `#` comments skipped.
public func parseTimelineHistory(_ text: String) throws -> [TimelineHistoryEntry] {
    var entries: [TimelineHistoryEntry] = []
    for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        let line = rawLine.drop(while: { $0 == " " || $0 == "\t" })
        if line.isEmpty || line.hasPrefix("#") { continue }
        let fields = line.split(maxSplits: 2, whereSeparator: { $0 == "\t" || $0 == " " })
        guard fields.count >= 2, let tli = UInt32(fields[0]), let lsn = LSN(fields[1]) else {
            throw TimelineHistoryError.malformedLine(index + 1, String(rawLine))
        }
        if let last = entries.last, tli <= last.parent { throw TimelineHistoryError.notAscending(line: index + 1) }
        let reason = fields.count > 2 ? String(fields[2]).trimmingTrailingWhitespace() : ""
        entries.append(TimelineHistoryEntry(parent: tli, switchPoint: lsn, reason: reason))
    }
    return entries
}

extension String {
    fileprivate func trimmingTrailingWhitespace() -> String {
        var s = self[...]
        while let last = s.last, last == " " || last == "\t" || last == "\r" { s = s.dropLast() }
        return String(s)
    }
}

/// Where `timeline` ended and which timeline followed it, according to `history`, the history file of
/// `current`; nil when `timeline` is not an ancestor of `current`.
public func timelineEnd(
    of timeline: TimeLineID, history: [TimelineHistoryEntry], current: TimeLineID
)
    -> (switchPoint: LSN, next: TimeLineID)?
{
    guard let index = history.firstIndex(where: { $0.parent == timeline }) else { return nil }
    return (history[index].switchPoint, index + 1 < history.count ? history[index + 1].parent : current)
}

/// The timeline whose WAL files hold the segment starting at `segmentStart`, by `history` (the history file of
/// `current`): a child timeline's first file holds its parent's WAL up to the switch point, so only segments
/// before the switch point's belong to the parent.
public func timeline(
    ofSegmentAt segmentStart: LSN, history: [TimelineHistoryEntry], current: TimeLineID, segmentSize: WALSegmentSize
) -> TimeLineID {
    let segment = segmentSize.segmentNumber(of: segmentStart)
    return history.first { segment < segmentSize.segmentNumber(of: $0.switchPoint) }?.parent ?? current
}

extension WALSegmentSize {
    /// The start of the first segment of the timeline whose history file is `history`: the segment holding its
    /// switch point. Nil for timeline 1 (no history).
    public func timelineBegins(history: [TimelineHistoryEntry]) -> LSN? {
        history.last.map { segmentStart(of: $0.switchPoint) }
    }
}
