from django.urls import path

from billing import views

urlpatterns = [
    path("", views.usage, name="usage"),
    path("plans/", views.plans, name="billing_plans"),
    path("plans/<slug:slug>/checkout/", views.checkout, name="billing_checkout"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe_webhook"),
]
