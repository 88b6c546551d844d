package dev.dualstream.client;

import io.grpc.Status;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The request was malformed. {@link #fieldPath()} names the offending field by its request path,
 * for example {@code events[1].type}; do not retry the request unchanged.
 */
public final class InvalidArgumentException extends DualstreamException {
  private static final long serialVersionUID = 1L;

  // The sidecar's INVALID_ARGUMENT details start with the field's path: `event.type: ...`,
  // `events[2].source_id: ...`, `event.attributes['x']: ...`.
  private static final Pattern FIELD_FIRST =
      Pattern.compile(
          "^([A-Za-z_][A-Za-z0-9_]*(?:\\[[^\\]]*\\]|\\.[A-Za-z_][A-Za-z0-9_]*)*): (.*)$",
          Pattern.DOTALL);

  private final String fieldPath;
  private final String problem;

  InvalidArgumentException(String details, Throwable cause) {
    super(Status.Code.INVALID_ARGUMENT, details, cause);
    Matcher matcher = FIELD_FIRST.matcher(details);
    if (matcher.matches()) {
      fieldPath = matcher.group(1);
      problem = matcher.group(2);
    } else {
      fieldPath = "";
      problem = details;
    }
  }

  /** The path of the field at fault, such as {@code events[1].type}; empty when not named. */
  public String fieldPath() {
    return fieldPath;
  }

  /** What is wrong with the field, such as {@code is required}. */
  public String problem() {
    return problem;
  }
}
