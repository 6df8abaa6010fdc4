from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        from accounts import signals as accounts_signals
        from billing import receivers

        post_save.connect(receivers.subscription_for_new_user, sender=get_user_model(),
                          dispatch_uid="billing.subscription_for_new_user")
        accounts_signals.plan_assign_requested.connect(receivers.plan_assign_requested,
                                                        dispatch_uid="billing.plan_assign_requested")
