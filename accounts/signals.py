from django.dispatch import Signal

# Sent by `issue_api_key --plan`; billing connects a receiver that assigns the plan or raises CommandError.
plan_assign_requested = Signal()
