"""An order saga: reserve stock, charge the card, book the shipment; undo on failure.

The three steps of an order live in three services that share no transaction. The workflow
makes them behave as one: after each step that succeeds it registers the step's
*compensation* (release the reservation, refund the charge); when a later step fails it runs
the registered compensations in reverse order and ends with a clear result saying which stage
failed, why, and what was undone.

What is durable: every call (its request, with the idempotency key, and its reply or error) is
recorded, and so is every compensation. A workflow that crashes or suspends between the
charge and the refund replays to the same point and continues: the refund is sent once and
only for a charge that happened, whatever the number of replays. A compensation that fails is
retried after a durable sleep (the Lambda is not running while it waits); if it keeps
failing the workflow fails, so that the order shows up as needing a human.

Run it on the embedded runtime:

    python -m lambda_workflow run examples/order_saga.py
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field

from lambda_workflow import Service, ServiceError, WorkflowContext, workflow
from lambda_workflow.local import LocalRuntime

Stage = Literal["inventory", "payment", "shipping"]


class OrderLine(BaseModel):
    sku: str
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)


class Address(BaseModel):
    name: str
    street: str
    city: str
    postal_code: str
    country: str  # ISO 3166 alpha-2


class Order(BaseModel):
    """The workflow's input."""

    order_id: str
    customer_id: str
    lines: list[OrderLine]
    card_token: str
    ship_to: Address

    @property
    def total_cents(self) -> int:
        return sum(line.quantity * line.unit_price_cents for line in self.lines)


# --- The services' requests and replies -------------------------------------------------
class ReserveRequest(BaseModel):
    order_id: str
    lines: list[OrderLine]


class Reservation(BaseModel):
    reservation_id: str


class ReleaseRequest(BaseModel):
    order_id: str
    reservation_id: str


class ChargeRequest(BaseModel):
    order_id: str
    card_token: str
    amount_cents: int
    idempotency_key: str  # the payment provider charges once per key, however often asked


class Charge(BaseModel):
    charge_id: str
    amount_cents: int


class RefundRequest(BaseModel):
    order_id: str
    charge_id: str
    amount_cents: int


class Refund(BaseModel):
    refund_id: str


class ShipmentRequest(BaseModel):
    order_id: str
    ship_to: Address
    lines: list[OrderLine]


class Shipment(BaseModel):
    tracking_number: str
    carrier: str


class OrderResult(BaseModel):
    """The workflow's result: confirmed with a tracking number, or cancelled with the stage
    that failed, the reason, and the compensations that ran (in the order they ran)."""

    # Named so that it sorts first in the canonical JSON the CLI prints.
    confirmed: bool
    order_id: str
    failed_stage: Stage | None = None
    reason: str | None = None
    undone: list[str] = Field(default_factory=list)  # the compensations that ran
    payment_id: str | None = None
    tracking_number: str | None = None


reserve_inventory = Service("inventory-reserve", ReserveRequest, Reservation)
release_inventory = Service("inventory-release", ReleaseRequest, None)
charge_payment = Service("payment-charge", ChargeRequest, Charge)
refund_payment = Service("payment-refund", RefundRequest, Refund)
book_shipping = Service("shipping-book", ShipmentRequest, Shipment)

#: Attempts of each compensation before the workflow gives up (and fails, for a human).
COMPENSATION_ATTEMPTS = 5
#: The durable sleep between two attempts of a compensation.
COMPENSATION_RETRY_DELAY = timedelta(minutes=1)


class Saga:
    """Compensations registered as the steps succeed, run newest first on failure."""

    def __init__(self, ctx: WorkflowContext[Order]) -> None:
        self._ctx = ctx
        self._compensations: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def add(self, name: str, undo: Callable[[], Awaitable[object]]) -> None:
        """Register the compensation of a step that has just succeeded."""
        self._compensations.append((name, undo))

    async def compensate(self) -> list[str]:
        """Run every registered compensation in reverse order, each until it succeeds (up to
        :data:`COMPENSATION_ATTEMPTS`, with a durable sleep in between). Returns their names
        in the order they ran.

        Raises:
            ServiceError: a compensation failed on its last attempt.
        """
        done: list[str] = []
        while self._compensations:
            name, undo = self._compensations.pop()
            for attempt in range(1, COMPENSATION_ATTEMPTS + 1):
                try:
                    await undo()
                    break
                except ServiceError as exc:
                    if attempt == COMPENSATION_ATTEMPTS:
                        raise
                    self._ctx.logger.warning("compensation %s failed (%s), retrying", name,
                                             exc)
                    await self._ctx.sleep(COMPENSATION_RETRY_DELAY)
            done.append(name)
        return done


@workflow
async def place_order(ctx: WorkflowContext[Order]) -> OrderResult:
    """Reserve, charge, ship; on a failure, compensate the completed steps in reverse."""
    order = ctx.request
    saga = Saga(ctx)
    stage: Stage = "inventory"
    charge: Charge | None = None
    try:
        reservation = await ctx.call(reserve_inventory, ReserveRequest(
            order_id=order.order_id, lines=order.lines))
        saga.add("release-inventory", lambda: ctx.call(release_inventory, ReleaseRequest(
            order_id=order.order_id, reservation_id=reservation.reservation_id)))

        stage = "payment"
        charge = await ctx.call(charge_payment, ChargeRequest(
            order_id=order.order_id, card_token=order.card_token,
            amount_cents=order.total_cents, idempotency_key=str(ctx.uuid4())))
        charged = charge
        saga.add("refund-payment", lambda: ctx.call(refund_payment, RefundRequest(
            order_id=order.order_id, charge_id=charged.charge_id,
            amount_cents=charged.amount_cents)))

        stage = "shipping"
        shipment = await ctx.call(book_shipping, ShipmentRequest(
            order_id=order.order_id, ship_to=order.ship_to, lines=order.lines))
    except ServiceError as exc:
        undone = await saga.compensate()
        return OrderResult(confirmed=False, order_id=order.order_id, failed_stage=stage,
                           reason=f"{exc.error_type}: {exc.message}", undone=undone,
                           payment_id=charge.charge_id if charge else None)
    return OrderResult(confirmed=True, order_id=order.order_id, payment_id=charge.charge_id,
                       tracking_number=shipment.tracking_number)


# --- Local stand-ins for the three services (on AWS, three teams' Lambda functions) -------
@dataclass
class LocalShop:
    """Inventory, payments and shipping, in memory, with the effects a test can check: stock
    levels, money charged and refunded per order, and a log of every effect in order."""

    stock: dict[str, int] = field(default_factory=lambda: {
        "book-ddia": 12, "mug-lambda": 40, "lamp-zebra": 0})
    served_countries: frozenset[str] = frozenset({"DE", "FR", "NL", "GB", "US"})
    declined_cards: frozenset[str] = frozenset({"tok_declined"})
    reservations: dict[str, list[OrderLine]] = field(default_factory=dict)
    charges: dict[str, ChargeRequest] = field(default_factory=dict)
    refunds: dict[str, str] = field(default_factory=dict)  # charge id -> refund id
    log: list[str] = field(default_factory=list)

    def reserve(self, request: ReserveRequest) -> Reservation:
        for line in request.lines:
            if self.stock.get(line.sku, 0) < line.quantity:
                raise ServiceError("OutOfStock", f"only {self.stock.get(line.sku, 0)} of "
                                   f"{line.sku} left, {line.quantity} wanted", {"sku": line.sku})
        reservation_id = f"res-{request.order_id}"
        if reservation_id not in self.reservations:  # idempotent per order
            for line in request.lines:
                self.stock[line.sku] -= line.quantity
            self.reservations[reservation_id] = request.lines
            self.log.append(f"reserved {reservation_id}")
        return Reservation(reservation_id=reservation_id)

    def release(self, request: ReleaseRequest) -> None:
        lines = self.reservations.pop(request.reservation_id, None)
        if lines is not None:  # idempotent: releasing twice gives the stock back once
            for line in lines:
                self.stock[line.sku] += line.quantity
            self.log.append(f"released {request.reservation_id}")

    def charge(self, request: ChargeRequest) -> Charge:
        if request.card_token in self.declined_cards:
            raise ServiceError("CardDeclined", "the issuer declined the card",
                               {"order_id": request.order_id})
        charge_id = f"ch-{request.idempotency_key[:8]}"
        if charge_id not in self.charges:
            self.charges[charge_id] = request
            self.log.append(f"charged {charge_id} {request.amount_cents}")
        return Charge(charge_id=charge_id, amount_cents=request.amount_cents)

    def refund(self, request: RefundRequest) -> Refund:
        refund_id = self.refunds.get(request.charge_id)
        if refund_id is None:
            refund_id = self.refunds[request.charge_id] = f"re-{request.charge_id}"
            self.log.append(f"refunded {request.charge_id} {request.amount_cents}")
        return Refund(refund_id=refund_id)

    def ship(self, request: ShipmentRequest) -> Shipment:
        if request.ship_to.country not in self.served_countries:
            raise ServiceError("AddressNotServed", f"no carrier delivers to "
                               f"{request.ship_to.country}", {"order_id": request.order_id})
        self.log.append(f"shipped {request.order_id}")
        return Shipment(tracking_number=f"TRK-{request.order_id.upper()}", carrier="DHL")

    def net_charged_cents(self, order_id: str) -> int:
        """What the customer of ``order_id`` paid in the end: charges minus refunds."""
        return sum(c.amount_cents for charge_id, c in self.charges.items()
                   if c.order_id == order_id and charge_id not in self.refunds)


def setup(runtime: LocalRuntime) -> LocalShop:
    """Called by ``lambda-workflow run``: register the workflow and implement the services
    with a fresh :class:`LocalShop`, which is returned."""
    shop = LocalShop()
    runtime.register(place_order)
    runtime.implement(reserve_inventory, shop.reserve)
    runtime.implement(release_inventory, shop.release)
    runtime.implement(charge_payment, shop.charge)
    runtime.implement(refund_payment, shop.refund)
    runtime.implement(book_shipping, shop.ship)
    return shop


def _order(order_id: str, *, sku: str = "book-ddia", card: str = "tok_visa",
           country: str = "DE") -> Order:
    return Order(order_id=order_id, customer_id="cust-42",
                 lines=[OrderLine(sku=sku, quantity=2, unit_price_cents=39_90),
                        OrderLine(sku="mug-lambda", quantity=1, unit_price_cents=12_50)],
                 card_token=card,
                 ship_to=Address(name="Ada Lovelace", street="1 Analytical Way",
                                 city="Berlin", postal_code="10115", country=country))


# Inputs that `lambda-workflow run` starts when no --input is given: success, then a failure
# at each stage (nothing to undo; release the stock; refund, then release the stock).
EXAMPLES = {
    "order-ok": _order("order-ok"),
    "order-out-of-stock": _order("order-out-of-stock", sku="lamp-zebra"),
    "order-card-declined": _order("order-card-declined", card="tok_declined"),
    "order-undeliverable": _order("order-undeliverable", country="AQ"),
}
