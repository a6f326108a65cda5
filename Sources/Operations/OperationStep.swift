import Foundation
import StatusModel

/// One timed step of an operation's report (rejoin, switchover): what was done, how long it took, what it found.
public struct OperationStep: Codable, Sendable, Equatable {
    public var name: String
    public var seconds: Double
    public var detail: String

    public init(name: String, seconds: Double, detail: String) {
        self.name = name
        self.seconds = seconds
        self.detail = detail
    }

    /// The steps' table and the next steps' list of a Markdown report; nothing for empty lists.
    static func markdown(steps: [OperationStep], nextSteps: [String]) -> [String] {
        var out: [String] = []
        if !steps.isEmpty {
            out += ["", "| Step | Seconds | Detail |", "|---|---|---|"]
            for step in steps { out.append("| \(step.name) | \(String(format: "%.1f", step.seconds)) | \(step.detail) |") }
        }
        if !nextSteps.isEmpty { out += ["", "## Next steps", ""] + nextSteps.map { "- " + $0 } }
        return out
    }
}

/// Times consecutive steps: each one lasts from the end of the one before (or the clock's start).
struct StepClock {
    private var last = ContinuousClock.now

    mutating func finish(_ name: String, _ detail: String) -> OperationStep {
        let now = ContinuousClock.now
        let elapsed = now - last
        last = now
        return OperationStep(name: name, seconds: roundedSeconds(elapsed), detail: detail)
    }
}
