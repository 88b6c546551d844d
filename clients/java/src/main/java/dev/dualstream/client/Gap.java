package dev.dualstream.client;

import java.time.Instant;

/**
 * Notifications were missed and not replayed (the subscription's policy is {@link
 * SlowConsumerPolicy#GAP}). Subscribe again from {@link #cursor()} to receive exactly what was
 * missed; the subscription itself goes on live.
 *
 * @param reason why notifications were missed
 * @param missed how many, when the sidecar knows; 0 when it does not (a Redis outage)
 * @param cursor resume from here to receive everything missed
 * @param since when the stream stopped delivering
 * @param until when it delivered again
 */
public record Gap(GapReason reason, long missed, String cursor, Instant since, Instant until)
    implements StreamMessage {}
